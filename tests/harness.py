"""The end-to-end harness: catalogues built in Python, a real `vary serve` with its key, and one way to post.

- Catalogue builders: `local`, `hosted` and `route` make [[models]] tables; `catalogue` writes them
  (with `default` and any top-level tables) as the TOML file vary reads. `FAST` holds the retry
  settings that keep a hosted target's failures quick in tests.
- `serve(root, ...)`: a tiny-random `vary serve` on a free loopback port, on a data dir under `root`,
  with a catalogue if one is given, and an API key made in its database; stopped by its own process
  id when the block ends. It yields a `Running`: the server, its key, an openai SDK client and
  `post_variation`.
- `post_variation(...)`: the variation request as raw HTTP (for what an SDK will not send), with the
  defaults most tests want: one small PNG, 256x256, b64_json.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from openai import OpenAI

from tests.conftest import create_key, png_bytes
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


def local(
    name: str = "local", engine: str = "kandinsky-2.2", *, weights: str = "tiny-random", **table: Any
) -> dict[str, Any]:
    """A local model's [[models]] table (the tiny twin of `engine` unless `weights` says otherwise)."""
    return {"name": name, "engine": engine, "weights": weights, **table}


def hosted(name: str, engine: str, base_url: str, *, key_env: str | None = None, **options: Any) -> dict[str, Any]:
    """A hosted target's [[models]] table: its provider at `base_url`, its key in the variable `key_env`."""
    table = {"base_url": base_url, **({"api_key_env": key_env} if key_env else {}), **options}
    return {"name": name, "engine": engine, "options": table}


def route(name: str, members: Sequence[str], **table: Any) -> dict[str, Any]:
    """A route's [[models]] table: its models, tried in order."""
    return {"name": name, "route": list(members), **table}


def catalogue(*models: Mapping[str, Any], default: str | None = None, **top: Any) -> str:
    """The catalogue file's text."""
    document: dict[str, Any] = {**({"default": default} if default else {}), **top, "models": [dict(m) for m in models]}
    return tomli_w.dumps(document)


@dataclass
class Running:
    """A started `vary serve` and a key for it."""

    server: ServerProcess
    key: str
    root: Path

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def client(self, **options: Any) -> OpenAI:
        """The official openai SDK pointed at this vary, without its own retries (a test sees every answer)."""
        return OpenAI(base_url=f"{self.base_url}/v1", api_key=self.key, **{"max_retries": 0, **options})

    def post_variation(self, **fields: Any) -> httpx.Response:
        return post_variation(self.base_url, self.key, **fields)


def post_variation(
    base_url: str,
    key: str | None,
    *,
    image: bytes | None = None,
    images: Sequence[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = WAIT_S,
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
) -> Iterator[Running]:
    """A `vary serve` on a data dir under `root`, with the catalogue (if any) written beside it."""
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    extra = list(args)
    if catalogue is not None:
        (root / "vary.toml").write_text(catalogue)
        extra += ["--catalogue", str(root / "vary.toml")]
    api_key = create_key(data_dir)[1] if key else ""
    with ServerProcess(data_dir, model=model, extra_args=extra, env=dict(env or {})) as server:
        yield Running(server, api_key, root)
