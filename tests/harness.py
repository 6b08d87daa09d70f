"""The end-to-end harness: test images and keys, catalogues built in Python, a real `vary serve` with its key,
and one way to post.

- `png_bytes`, `decode_png`: a test image and the check that an answer is one; `create_key`: a key (an admin
  key, a key with limits) made in a data dir's database; `usage_rows`: that database's usage rows, and
  `usage_rows_until` the same polled for until a condition holds (a row may be written a moment late);
  `metrics`: a server's /metrics, parsed.
- Catalogue builders: `local`, `hosted` and `route` make [[models]] tables; `catalogue` writes them
  (with `default` and any top-level tables) as the TOML file vary reads. `FAST` holds the retry
  settings that keep a hosted target's failures quick in tests; `aws_env` the environment a Bedrock
  target reads its credentials from (and nothing else).
- `serve(root, ...)`: a tiny-random `vary serve` on a free loopback port, on the data dir `root / "data"`,
  with a catalogue if one is given, an API key (and an admin key, if asked) made in its database; stopped
  by its own process id when the block ends. It yields a `Running`: the server, its keys, an openai SDK
  client, an httpx client, `post_variation`, `new_key` and `restart`. Two `serve`s of one root share the
  data dir. tests/conftest.py's `start_server` fixture starts them for one test and stops them after it.
- `post_variation(...)`: the variation request as raw HTTP (for what an SDK will not send), with the
  defaults most tests want: one small PNG, 256x256, b64_json.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from openai import OpenAI
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from vary.key_limits import KeyLimits
from vary.state.database import Database
from vary.state.schema import UsageRow
from vary.testing import ServerProcess

# A hosted target's settings that make its failures quick: short timeouts and backoffs, no breaker.
FAST: dict[str, Any] = {
    "timeout_seconds": 2,
    "backoff_seconds": 0.05,
    "max_backoff_seconds": 2,
    "circuit_failures": 1000,
}
# What a test waits for an answer at most: a CPU busy with other tests runs the tiny models slowly.
WAIT_S = 120.0

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- images, keys, usage, metrics ----------------------------------------------------------------


def png_bytes(size: int | tuple[int, int] = 64, mode: str = "RGB", color: object = None, **save: object) -> bytes:
    dims = (size, size) if isinstance(size, int) else size
    if color is None:
        color = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 128), "L": 90, "LA": (90, 128), "P": 3, "1": 1}.get(
            mode, 1
        )
    buf = io.BytesIO()
    Image.new(mode, dims, color).save(buf, format="PNG", **save)
    return buf.getvalue()


def b64_images(answer: httpx.Response) -> list[bytes]:
    """The images of a 200 answer asked for as b64_json, in order."""
    assert answer.status_code == 200, answer.text
    return [base64.b64decode(item["b64_json"]) for item in answer.json()["data"]]


def decode_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    img.load()
    return img


def create_key(data_dir: Path, name: str = "test", *, admin: bool = False, **limits: int) -> tuple[str, str]:
    """A key made in the data dir's database (made if need be): its id and the key; `limits` are KeyLimits'."""
    db = Database.open(data_dir / "vary.db")
    try:
        info, key = db.create_key(name, admin=admin, limits=KeyLimits(**limits) if limits else None)
        return info.id, key
    finally:
        db.close()


def usage_rows(data_dir: Path, **filters: Any) -> list[UsageRow]:
    """The data dir's usage rows, oldest first (`filters` are Database.usage_rows')."""
    db = Database.open(data_dir / "vary.db")
    try:
        return db.usage_rows(**filters)
    finally:
        db.close()


def usage_rows_until(
    data_dir: Path, found: Callable[[list[UsageRow]], bool], *, timeout: float = WAIT_S, **filters: Any
) -> list[UsageRow]:
    """The usage rows once `found(rows)` holds, polled for: a row the database could not take at once is spooled
    and written a moment later. At the deadline, the rows as they are, for the caller's assertion to show."""
    deadline = time.monotonic() + timeout
    while True:
        rows = usage_rows(data_dir, **filters)
        if found(rows) or time.monotonic() >= deadline:
            return rows
        time.sleep(0.1)  # poll interval, bounded by the deadline


def metrics(base_url: str) -> Metrics:
    """Every sample of the server's /metrics, by name and sorted labels."""
    text = httpx.get(f"{base_url}/metrics", timeout=WAIT_S).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# --- catalogues ----------------------------------------------------------------------------------


def local(
    name: str = "local", engine: str = "kandinsky-2.2", *, weights: str | None = "tiny-random", **table: Any
) -> dict[str, Any]:
    """A local model's [[models]] table: the tiny twin of `engine` unless `weights` says otherwise (None: the
    engine's own default weights, from the Hub)."""
    return {"name": name, "engine": engine, **({"weights": weights} if weights else {}), **table}


def hosted(
    name: str, engine: str, base_url: str | None, *, key_env: str | None = None, **options: Any
) -> dict[str, Any]:
    """A hosted target's [[models]] table: its provider at `base_url` (None: the provider's own way, as
    Bedrock's endpoint_url), its key in the variable `key_env`."""
    table = {**({"base_url": base_url} if base_url else {}), **({"api_key_env": key_env} if key_env else {}), **options}
    return {"name": name, "engine": engine, "options": table}


def route(name: str, members: Sequence[str], **table: Any) -> dict[str, Any]:
    """A route's [[models]] table: its models, tried in order."""
    return {"name": name, "route": list(members), **table}


def catalogue(*models: Mapping[str, Any], default: str | None = None, **top: Any) -> str:
    """The catalogue file's text."""
    document: dict[str, Any] = {**({"default": default} if default else {}), **top, "models": [dict(m) for m in models]}
    return tomli_w.dumps(document)


def aws_env(root: Path, access_key: str) -> dict[str, str]:
    """AWS's standard credential chain, from the environment only: no files, no instance metadata."""
    return {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": "fake-secret-key-for-tests",
        "AWS_CONFIG_FILE": str(root / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# --- a running server ----------------------------------------------------------------------------


@dataclass
class Running:
    """A started `vary serve` and its keys."""

    server: ServerProcess
    key: str  # "" where serve() made none
    root: Path
    admin: str = ""  # an admin key, where serve() was asked for one
    key_id: str = ""  # the key's id, as usage rows name it
    request_timeout: float = WAIT_S  # how long post_variation and http() wait for an answer

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def client(self, key: str | None = None, **options: Any) -> OpenAI:
        """The official openai SDK pointed at this vary, without its own retries (a test sees every answer)."""
        return OpenAI(base_url=f"{self.base_url}/v1", api_key=key or self.key, **{"max_retries": 0, **options})

    def http(self, key: str | None = None, **options: Any) -> httpx.Client:
        """An httpx client on this vary, sending the key (this one's, unless another is given)."""
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, **{"timeout": self.request_timeout, **options})

    def post_variation(self, key: str | None = None, **fields: Any) -> httpx.Response:
        """post_variation with this vary's key, or the one given."""
        return post_variation(self.base_url, key or self.key, **{"timeout": self.request_timeout, **fields})

    def new_key(self, name: str, *, admin: bool = False, **limits: int) -> tuple[str, str]:
        return create_key(self.data_dir, name, admin=admin, **limits)

    def restart(self, *, same_port: bool = False) -> ServerProcess:
        """Stops the server, if it still runs, and starts it again as it was: data dir, arguments, environment."""
        self.server.stop()
        port = self.server.port if same_port else 0
        self.server = dataclasses.replace(self.server, port=port, process=None, log_path=None).start()
        return self.server


def post_variation(
    base_url: str,
    key: str | None,
    *,
    image: bytes | None = None,
    images: Sequence[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | httpx.Timeout = WAIT_S,
    size: str | None = "256x256",
    response_format: str | None = "b64_json",
    **fields: Any,
) -> httpx.Response:
    """POST /v1/images/variations as raw HTTP; a field given as None is left out of the form."""
    parts = (
        [("image[]", (f"in-{k}.png", data, "image/png")) for k, data in enumerate(images)]
        if images is not None
        else [("image", ("in.png", png_bytes(64) if image is None else image, "image/png"))]
    )
    form = {"size": size, "response_format": response_format, **fields}
    return httpx.post(
        f"{base_url}/v1/images/variations",
        headers={**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})},
        files=parts,
        data={name: str(value) for name, value in form.items() if value is not None},
        timeout=timeout,
    )


@contextlib.contextmanager
def serve(
    root: Path,
    *,
    catalogue: str | None = None,
    model: str = "tiny-random",
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    key: bool = True,
    admin: bool = False,
    port: int = 0,
    startup_timeout: float = WAIT_S,
    request_timeout: float = WAIT_S,
) -> Iterator[Running]:
    """A `vary serve` on the data dir `root / "data"`, with the catalogue (if any) written beside it.

    `key`: make a key first (without one, the first start makes and prints its own); `admin`: an admin key too.
    `request_timeout`: how long the Running's post_variation and http() wait for an answer.
    """
    data_dir = root / "data"
    extra = list(args)
    if catalogue is not None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "vary.toml").write_text(catalogue)
        extra += ["--catalogue", str(root / "vary.toml")]
    key_id, api_key = create_key(data_dir) if key else ("", "")
    admin_key = create_key(data_dir, "admin", admin=True)[1] if admin else ""
    server = ServerProcess(
        data_dir, model=model, extra_args=extra, env=dict(env or {}), port=port, startup_timeout=startup_timeout
    )
    running = Running(server.start(), api_key, root, admin_key, key_id, request_timeout)
    try:
        yield running
    finally:
        running.server.stop()
