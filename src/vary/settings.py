"""One frozen Settings object; every field is also an environment variable VARY_<FIELD>."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vary.controls import MAX_GUIDANCE_SCALE, MAX_STEPS
from vary.datadir import default_data_dir
from vary.imaging import ImageRules
from vary.key_limits import LIMIT_FIELDS, KeyLimits
from vary.request import MAX_IMAGES

MiB = 1024 * 1024
# A shorter VARY_SIGNING_SECRET could be guessed; `openssl rand -hex 32` gives 64.
MIN_SIGNING_SECRET_CHARS = 32
# The model `vary serve` and `vary pull` use when none is named.
DEFAULT_MODEL = "kandinsky-2.2"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VARY_", frozen=True, extra="ignore")

    # Where to listen and what to serve.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Database, images and URL secret; the per-user data directory unless given (see datadir.py).
    data_dir: Path = Field(default_factory=default_data_dir)
    # A TOML model catalogue (see config.py); without one, `model` is served alone.
    config: Path | None = None
    # A built-in model id or a local model directory.
    model: str = DEFAULT_MODEL
    no_auth: bool = False
    # Headers whose whole value is an API key, read when there is no `Authorization: Bearer` header: Azure
    # OpenAI's and gateways' clients send theirs so (api/auth.py). VARY_API_KEY_HEADERS='["api-key"]'.
    api_key_headers: tuple[str, ...] = ("api-key", "x-obiguard-api-key")
    # Base of the URLs handed out, for deployments behind a proxy; None = the request's own base URL.
    public_url: str | None = None
    # "cuda", "cpu", ... ; None picks CUDA when present.
    device: str | None = None
    # None: float16 on accelerators, float32 on the CPU.
    dtype: Literal["float16", "bfloat16", "float32"] | None = None
    # torch.compile the UNet, warmed up at start for every render size (costs start-up time).
    compile: bool = False

    # Generation overrides for every served model; None keeps each model's own defaults.
    num_inference_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=MAX_GUIDANCE_SCALE)
    sampler: Literal["dpmsolver++", "ddpm", "default"] | None = None
    # The most denoising steps a request may ask for with `steps`: each costs GPU time.
    max_request_steps: int = Field(default=100, ge=1, le=MAX_STEPS)

    # URLs and their files.
    url_ttl_seconds: int = Field(default=3600, ge=1)
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    # Where images are stored: file:///abs/dir or s3://BUCKET[/PREFIX] (storage.py); None: the data dir's images/.
    storage_url: str | None = None
    # `url` answers are the S3 store's own presigned GET URLs: image bytes never pass through vary.
    storage_presign: bool = False

    # Input limits. OpenAI's contract: the image must be *less than* 4 MiB.
    max_image_bytes: int = Field(default=4 * MiB, ge=1)
    # Slack on top of the images for the other form fields and multipart framing.
    max_body_overhead_bytes: int = Field(default=64 * 1024, ge=1024)
    # Decoded pixels are checked from the PNG header before decoding (decompression bombs).
    max_image_side: int = Field(default=4096, ge=1)
    max_user_chars: int = Field(default=256, ge=1)
    # The whole body must arrive within this: a client that trickles its upload is cut off (408).
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    # A new connection must send a request, and each request its headers, within this (slow loris).
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    # The request line (414 past it) and the whole head, request line and headers (431), as nginx caps them.
    max_request_line_bytes: int = Field(default=8 * 1024, ge=256)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    # A client that reads none of its response for this long is dropped, and its buffered response freed.
    send_timeout_seconds: float = Field(default=60.0, gt=0)

    # Pending variation requests per model before answering 429.
    queue_size: int = Field(default=64, ge=1)
    # Images per pipeline call when concurrent requests are coalesced; at least one whole n=10 request.
    max_batch_images: int = Field(default=16, ge=10)
    # Seconds a 429 asks the client to wait.
    retry_after_seconds: int = Field(default=2, ge=1)

    # Per-key limits for keys that set none of their own (`vary keys create/update`); None: unlimited.
    key_requests_per_minute: int | None = Field(default=None, ge=1)
    key_images_per_minute: int | None = Field(default=None, ge=1)
    key_max_concurrent: int | None = Field(default=None, ge=1)
    key_image_quota: int | None = Field(default=None, ge=1)
    # The quota's period, in UTC: a calendar day or a calendar month.
    quota_period: Literal["day", "month"] = "month"
    # Where rate-limit windows live: memory:// for one process; a limits storage URI (redis://...) to share.
    rate_limit_storage: str = "memory://"

    # Keys, usage, shared secrets: any SQLAlchemy URL (postgresql+psycopg://user@host/db to share one
    # between replicas); None: the SQLite file vary.db in the data dir.
    database_url: str | None = None
    # The server's wait for a database locked by another writer; a usage row that cannot wait is spooled.
    db_busy_timeout_seconds: float = Field(default=0.25, gt=0)
    # PostgreSQL: a statement of the server's running longer is cancelled (a stuck database); usage is spooled.
    db_statement_timeout_seconds: float = Field(default=5.0, gt=0)
    # The key that signs image URLs, the same on every replica; None: made once and kept in the database
    # (with database_url) or in the data dir's `secret` file (the SQLite default).
    signing_secret: SecretStr | None = None
    # Usage rows kept (in a file in the data dir) while the database cannot take them; past this, dropped.
    usage_spool_max_rows: int = Field(default=100_000, ge=1)

    # `vary serve --ray`: the address of an existing Ray cluster to run on as a Ray Serve application.
    ray_address: str | None = None
    # One attempt at a model's deployment, its queue wait included; past it (a hung replica) it is retried.
    ray_attempt_timeout_seconds: float = Field(default=600.0, gt=0)

    # Operations.
    # auto: text when the log goes to a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "text"] = "auto"
    # debug adds the tracebacks behind one-line errors (a model that fails to load, for one).
    log_level: Literal["debug", "info", "warning"] = "info"
    # A line for each fetch of a static file (CSS, JS, icons) at info level too; otherwise at debug level only.
    log_asset_requests: bool = False
    # On SIGTERM: stop accepting, let in-flight requests finish for this long, then exit.
    shutdown_timeout_seconds: int = Field(default=30, ge=0)
    # After this many quiet seconds (no request in flight), freed heap is handed back to the OS; 0: never.
    memory_release_after_seconds: float = Field(default=2.0, ge=0)
    # glibc malloc arenas for the whole process (fewer: less memory kept after bursts); 0: glibc's default.
    malloc_arenas: int = Field(default=2, ge=0)

    @field_validator("api_key_headers")
    @classmethod
    def _header_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not name or not all(c.isalnum() or c in "-_" for c in name) or name.lower() == "authorization":
                raise ValueError(f"{name!r} is not a header name vary can read a key from")
        return tuple(name.lower() for name in names)

    @field_validator("signing_secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value()) < MIN_SIGNING_SECRET_CHARS:
            raise ValueError(
                f"VARY_SIGNING_SECRET must be at least {MIN_SIGNING_SECRET_CHARS} characters "
                "(e.g. the output of `openssl rand -hex 32`)"
            )
        return secret

    def key_limits(self) -> KeyLimits:
        """The limits of keys that set none of their own."""
        return KeyLimits(**{name: getattr(self, f"key_{name}") for name in LIMIT_FIELDS})

    def image_rules(self) -> ImageRules:
        return ImageRules(max_bytes=self.max_image_bytes, max_side=self.max_image_side)

    def render_overrides(self) -> dict[str, object]:
        return {
            "steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "sampler": self.sampler,
        }

    @property
    def max_body_bytes(self) -> int:
        # A request may carry up to MAX_IMAGES images, each under the image limit.
        return MAX_IMAGES * self.max_image_bytes + self.max_body_overhead_bytes

    @property
    def db_path(self) -> Path:
        return self.data_dir / "vary.db"

    @property
    def database(self) -> str | Path:
        """The database to open (db.Database): database_url, or the path of the SQLite file in the data dir."""
        return self.database_url or self.db_path

    @property
    def usage_spool_path(self) -> Path:
        return self.data_dir / "usage-spool.jsonl"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def secret_path(self) -> Path:
        return self.data_dir / "secret"
