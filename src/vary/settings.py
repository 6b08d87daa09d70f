"""One frozen Settings object, each setting declared once: its environment variable, flag, default and help."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

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
# The sections `vary serve --help` groups its flags in, in this order; each setting names its own.
# (Typed as pydantic's JsonDict, which `json_schema_extra` takes: a plain dict[str, str] is not one.)
SERVER: JsonDict = {"section": "server"}
MODELS: JsonDict = {"section": "models"}
STORAGE: JsonDict = {"section": "storage and database"}
LIMITS: JsonDict = {"section": "limits"}
SAFETY: JsonDict = {"section": "content policy"}
OBSERVABILITY: JsonDict = {"section": "observability"}
CLUSTER: JsonDict = {"section": "cluster"}
SECTIONS = tuple(str(s["section"]) for s in (SERVER, MODELS, STORAGE, LIMITS, SAFETY, OBSERVABILITY, CLUSTER))


class SettingFiles(PydanticBaseSettingsSource):
    """VARY_<SETTING>_FILE=PATH: the setting's value is that file's content (its one trailing newline dropped), as
    Docker's and Kubernetes' secrets are mounted. VARY_<SETTING> itself wins where both are set."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads them all at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in self.settings_cls.model_fields:
            path = os.environ.get(f"VARY_{name.upper()}_FILE")
            if not path:
                continue
            try:
                values[name] = Path(path).read_text().removesuffix("\n")
            except OSError as exc:
                raise SettingsError(f"VARY_{name.upper()}_FILE: {exc.strerror or exc}: {path}") from None
        return values


class Settings(BaseSettings):
    """Every field is a setting: an environment variable VARY_<FIELD>, and a `vary serve` flag --<field>
    (vary/cli/flags.py derives the flags from these declarations: name, type, default, description)."""

    model_config = SettingsConfigDict(env_prefix="VARY_", frozen=True, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags, then VARY_* variables, then VARY_*_FILE files, then the defaults.
        return init_settings, env_settings, SettingFiles(settings_cls), dotenv_settings, file_secret_settings

    # Where to listen and what to serve.
    host: str = Field(default="127.0.0.1", description="interface to listen on", json_schema_extra=SERVER)
    port: int = Field(default=8000, ge=0, le=65535, description="port to listen on", json_schema_extra=SERVER)
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="database, images and URL secret (default: the per-user data dir, ~/.local/share/vary)",
        json_schema_extra=STORAGE,
    )
    catalogue: Path | None = Field(
        default=None,
        description="a TOML model catalogue; replaces --model (see docs/models.md)",
        json_schema_extra=MODELS,
    )
    config: Path | None = Field(default=None, description="deprecated name of --catalogue", json_schema_extra=MODELS)
    model: str = Field(
        default=DEFAULT_MODEL, description="a built-in model id or a local model directory", json_schema_extra=MODELS
    )
    accept_license: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="licences accepted for --model's weights, e.g. flux-1-dev-non-commercial (docs/licences.md)",
        json_schema_extra=MODELS,
    )
    no_auth: bool = Field(default=False, description="accept requests without an API key", json_schema_extra=SERVER)
    # Read when there is no `Authorization: Bearer` header: Azure OpenAI's and gateways' clients send theirs so.
    api_key_headers: tuple[str, ...] = Field(
        default=("api-key", "x-obiguard-api-key"),
        description="more headers that hold an API key, besides Authorization (env: a JSON list)",
        json_schema_extra=SERVER,
    )
    public_url: str | None = Field(
        default=None,
        description="base of the image URLs handed out (default: the request's own base URL)",
        json_schema_extra=SERVER,
    )
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] | None = Field(
        default=None,
        description="the Host values answered, comma-separated: vary.example.com,*.example.com (docs/security.md)",
        json_schema_extra=SERVER,
    )
    device: str | None = Field(
        default=None,
        description="torch device, e.g. cuda or cpu (default: cuda when present)",
        json_schema_extra=MODELS,
    )
    dtype: Literal["float16", "bfloat16", "float32"] | None = Field(
        default=None,
        description="weights' dtype (default: float16 on accelerators, float32 on the CPU)",
        json_schema_extra=MODELS,
    )
    compile: bool = Field(
        default=False,
        description="torch.compile the denoiser, warmed up for every render size (a slower start)",
        json_schema_extra=MODELS,
    )

    # Generation overrides for every served model; None keeps each model's own defaults.
    num_inference_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="denoising steps for every model (default: each model's own)",
        json_schema_extra=MODELS,
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_GUIDANCE_SCALE,
        description="guidance scale for all models",
        json_schema_extra=MODELS,
    )
    sampler: Literal["dpmsolver++", "ddpm", "default"] | None = Field(
        default=None,
        description="sampler for every model (default: each model's own)",
        json_schema_extra=MODELS,
    )
    max_request_steps: int = Field(
        default=100,
        ge=1,
        le=MAX_STEPS,
        description="the most steps a request may ask for with `steps` (GPU time)",
        json_schema_extra=MODELS,
    )

    # URLs and their files.
    url_ttl_seconds: int = Field(
        default=3600, ge=1, description="how long image URLs stay valid", json_schema_extra=STORAGE
    )
    sweep_interval_seconds: float = Field(
        default=60.0, gt=0, description="how often expired images are deleted", json_schema_extra=STORAGE
    )
    storage_url: str | None = Field(
        default=None,
        description="file:///abs/dir or s3://BUCKET[/PREFIX] for the images (default: the data dir's)",
        json_schema_extra=STORAGE,
    )
    storage_presign: bool = Field(
        default=False,
        description="`url` answers are the S3 store's own presigned GET URLs (bytes bypass vary)",
        json_schema_extra=STORAGE,
    )

    # Input limits. OpenAI's contract: the image must be *less than* 4 MiB.
    max_image_bytes: int = Field(
        default=4 * MiB, ge=1, description="the largest input image, in bytes", json_schema_extra=LIMITS
    )
    max_body_overhead_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="slack on top of the images for the other fields and multipart framing",
        json_schema_extra=LIMITS,
    )
    max_image_side: int = Field(
        default=4096,
        ge=1,
        description="the largest input side in pixels, read from the header before decoding",
        json_schema_extra=LIMITS,
    )
    max_user_chars: int = Field(default=256, ge=1, description="the longest `user` field", json_schema_extra=LIMITS)
    body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="the whole body must arrive within this; a trickled upload is cut off (408)",
        json_schema_extra=LIMITS,
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a connection must send each request's headers within this (slow loris)",
        json_schema_extra=LIMITS,
    )
    max_request_line_bytes: int = Field(
        default=8 * 1024,
        ge=256,
        description="the longest request line (414 past it), as nginx caps it",
        json_schema_extra=LIMITS,
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="the largest head, request line and headers (431 past it)",
        json_schema_extra=LIMITS,
    )
    send_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="a client that reads none of its response for this long is dropped",
        json_schema_extra=LIMITS,
    )

    # Queues and batches.
    queue_size: int = Field(
        default=64, ge=1, description="pending requests per model before answering 429", json_schema_extra=MODELS
    )
    max_batch_images: int = Field(
        default=16,
        ge=10,
        description="images per pipeline call when requests are coalesced (at least one n=10)",
        json_schema_extra=MODELS,
    )
    retry_after_seconds: int = Field(
        default=2, ge=1, description="seconds a 429 asks the client to wait", json_schema_extra=MODELS
    )

    # Per-key limits for keys that set none of their own (`vary keys create/update`); None: unlimited.
    key_requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="requests per minute of a key without its own limit",
        json_schema_extra=LIMITS,
    )
    key_images_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="images per minute of a key without its own limit",
        json_schema_extra=LIMITS,
    )
    key_max_concurrent: int | None = Field(
        default=None,
        ge=1,
        description="requests in flight at once for a key without its own limit",
        json_schema_extra=LIMITS,
    )
    key_image_quota: int | None = Field(
        default=None,
        ge=1,
        description="images per quota period for a key without its own quota",
        json_schema_extra=LIMITS,
    )
    quota_period: Literal["day", "month"] = Field(
        default="month", description="the quota's period, in UTC", json_schema_extra=LIMITS
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description="where rate-limit windows live: memory:// or redis://... to share them",
        json_schema_extra=LIMITS,
    )

    # State shared between replicas.
    database_url: str | None = Field(
        default=None,
        description="keys and usage in this database: postgresql+psycopg://HOST/DB (default: SQLite, data dir)",
        json_schema_extra=STORAGE,
    )
    db_busy_timeout_seconds: float = Field(
        default=0.25,
        gt=0,
        description="the server's wait for a locked database; a row that cannot wait is spooled",
        json_schema_extra=STORAGE,
    )
    db_statement_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="PostgreSQL: a statement of the server's running longer is cancelled",
        json_schema_extra=STORAGE,
    )
    # Never a flag (a process list shows flags): the environment or a secret file only.
    database_password: SecretStr | None = Field(
        default=None,
        description="the password for --database-url, kept out of the URL (e.g. VARY_DATABASE_PASSWORD_FILE, a secret "
        "file); a password in the URL itself wins",
        json_schema_extra=STORAGE,
    )
    signing_secret: SecretStr | None = Field(
        default=None,
        description="the key that signs image URLs, the same on every replica (default: made once and kept in the "
        "database, or in the data dir's `secret` file)",
        json_schema_extra=STORAGE,
    )
    signing_secret_previous: SecretStr | None = Field(
        default=None,
        description="with VARY_SIGNING_SECRET: the one it replaced, still verifying the URLs it signed until they "
        "expire (docs/security.md)",
        json_schema_extra=STORAGE,
    )
    usage_spool_max_rows: int = Field(
        default=100_000,
        ge=1,
        description="usage rows kept while the database cannot take them; past this, dropped",
        json_schema_extra=STORAGE,
    )

    # The content policy every model gets unless its [models.safety] table, or its route's, says otherwise
    # (vary.safety.policy; docs/safety.md). Off by default.
    safety_check: Literal["off", "input", "output", "both"] = Field(
        default="off",
        description="content checks on the input images, the output images, both, or off",
        json_schema_extra=SAFETY,
    )
    safety_classifier: str = Field(
        default="open-nsfw",
        description='"open-nsfw" (built in: the safety extra), "hf:ID_OR_PATH" or a guardrail URL',
        json_schema_extra=SAFETY,
    )
    safety_threshold: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="an image is flagged when its score is at least this",
        json_schema_extra=SAFETY,
    )
    safety_on_flagged_output: Literal["refuse", "regenerate"] = Field(
        default="refuse",
        description="a flagged output: refuse the request, or make that image again first",
        json_schema_extra=SAFETY,
    )
    safety_max_regenerations: int = Field(
        default=2,
        ge=0,
        le=10,
        description="the most times flagged outputs are made again before a refusal",
        json_schema_extra=SAFETY,
    )
    safety_fail: Literal["open", "closed"] = Field(
        default="closed",
        description="a classifier that is down, slow or answers garbage: pass the images, or 503",
        json_schema_extra=SAFETY,
    )
    safety_labels: str = Field(
        default="nsfw",
        description="an hf: classifier's labels that count as flagged, comma-separated",
        json_schema_extra=SAFETY,
    )
    safety_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="the longest a guardrail may take to answer one check",
        json_schema_extra=SAFETY,
    )

    # Ray Serve.
    ray_address: str | None = Field(
        default=None,
        description="run as a Ray Serve application on the Ray cluster at ADDRESS (host:port)",
        json_schema_extra=CLUSTER,
    )
    ray_attempt_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="one attempt at a model's deployment, queue wait included; then retried",
        json_schema_extra=CLUSTER,
    )

    # Operations.
    readyz_interval_seconds: float = Field(
        default=5.0,
        ge=0,
        description="/readyz writes to the store and database at most this often; 0: every call",
        json_schema_extra=OBSERVABILITY,
    )
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="log lines: auto is text on a terminal, json otherwise",
        json_schema_extra=OBSERVABILITY,
    )
    log_level: Literal["debug", "info", "warning"] = Field(
        default="info", description="debug adds tracebacks", json_schema_extra=OBSERVABILITY
    )
    log_asset_requests: bool = Field(
        default=False,
        description="a log line for each static file fetched (CSS, JS, icons), not only at debug",
        json_schema_extra=OBSERVABILITY,
    )
    shutdown_timeout_seconds: int = Field(
        default=30,
        ge=0,
        description="on SIGTERM, how long in-flight requests may finish before exit",
        json_schema_extra=SERVER,
    )
    # A load balancer keeps sending until its health checks see /readyz fail: serve that long first.
    drain_seconds: float = Field(
        default=0.0,
        ge=0,
        description="on SIGTERM, /readyz fails at once and requests are still served this long, then vary stops",
        json_schema_extra=SERVER,
    )
    memory_release_after_seconds: float = Field(
        default=2.0,
        ge=0,
        description="quiet seconds before freed heap is handed back to the OS; 0: never",
        json_schema_extra=SERVER,
    )
    malloc_arenas: int = Field(
        default=2,
        ge=0,
        description="glibc malloc arenas for the process (fewer: less memory kept); 0: glibc's",
        json_schema_extra=SERVER,
    )

    @model_validator(mode="before")
    @classmethod
    def _catalogue_by_its_old_name(cls, data: Any) -> Any:
        """VARY_CONFIG and --config, the catalogue's old names, still work (`deprecations` says so)."""
        if isinstance(data, dict) and data.get("catalogue") is None and data.get("config") is not None:
            return {**data, "catalogue": data["config"]}
        return data

    def deprecations(self) -> list[str]:
        """One line for each old name in use, for the server's log."""
        if self.config is not None:
            return ["VARY_CONFIG and --config are deprecated: use VARY_CATALOGUE or --catalogue (same meaning)"]
        return []

    @field_validator("allowed_hosts", "accept_license", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("api_key_headers")
    @classmethod
    def _header_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not name or not all(c.isalnum() or c in "-_" for c in name) or name.lower() == "authorization":
                raise ValueError(f"{name!r} is not a header name vary can read a key from")
        return tuple(name.lower() for name in names)

    @field_validator("signing_secret", "signing_secret_previous")
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
        """The database to open (db.Database): database_url (with database_password when it has none), or the path
        of the SQLite file in the data dir."""
        if self.database_url is None:
            return self.db_path
        if self.database_password is None:
            return self.database_url
        from sqlalchemy.engine import make_url  # here: the small kernel imports no database library at start

        url = make_url(self.database_url)
        if url.password is not None:
            return self.database_url
        return url.set(password=self.database_password.get_secret_value()).render_as_string(hide_password=False)

    @property
    def usage_spool_path(self) -> Path:
        return self.data_dir / "usage-spool.jsonl"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def secret_path(self) -> Path:
        return self.data_dir / "secret"
