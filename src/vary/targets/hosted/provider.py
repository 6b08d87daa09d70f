"""What every hosted provider is and has: its options (one shared base), its identity as a Target, its status.

A provider module subclasses `HostedProvider`, declares the catalogue engine names it answers to, its
options type (a subclass of `HostedOptions` with the provider's own knobs), what it does with a
request's controls, and where its service stands (live, legacy or retired, with the date); then it
registers itself with `vary.targets.hosted.registry.register_provider`. Retries, fallback and the
circuit breaker are the gateway's: a provider makes one attempt per call of `make`.
"""

from __future__ import annotations

import datetime
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from vary.controls import Capabilities
from vary.engines.base import ModelInfo
from vary.options import Options
from vary.request import VariationRequest
from vary.targets.base import Made, Resilience

# The whole of one client request to a hosted route, retries and fallbacks included, unless configured.
DEFAULT_DEADLINE_SECONDS = 300.0
# Requests in flight on one hosted provider at once, unless configured (docs/gateway.md says what each holds).
DEFAULT_MAX_CONCURRENT = 32
# A download host: a name, "*." and a name (its subdomains), or a bracketed IPv6 address, and optionally a port
# (without one, the URL scheme's default); no scheme or path.
_HOST = re.compile(
    r"(?:(?:\*\.)?[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)


@dataclass(frozen=True)
class HostedOptions(Options):
    """The options every hosted provider takes; a provider's own type adds its knobs (and may change defaults)."""

    # The provider's API; None: the provider's documented one.
    base_url: str | None = None
    # The name of the environment variable that holds the key, never the key itself; None: the provider's.
    api_key_env: str | None = None
    timeout_seconds: float = 120.0  # one attempt, the whole answer included
    max_attempts: int = 3
    backoff_seconds: float = 0.5  # the first retry's wait; it doubles, with jitter
    max_backoff_seconds: float = 20.0  # also caps a Retry-After
    circuit_failures: int = 5  # failed attempts in a row that open the circuit
    circuit_cooldown_seconds: float = 30.0
    # The model served alone: every attempt and wait within this; a route has its own deadline_seconds.
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    # Hosts besides the provider's own that its image URLs may be downloaded from ("*.example.com": its subdomains;
    # "host:8443": that port, else the URL scheme's default).
    download_hosts: tuple[str, ...] = ()
    # URL answers: downloaded, stored and signed by vary (its expiry, its host), or handed on as they are.
    rehost_urls: bool = True
    # Requests in flight on this provider at once (each holds its input and, later, its answer: up to tens of
    # MB); the next gets a 429 with Retry-After, or a route's next target. Raise it for a busy gateway.
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    description: str = ""

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.timeout_seconds <= 0 or self.deadline_seconds <= 0:
            raise ValueError("max_attempts must be at least 1, timeout_seconds and deadline_seconds above 0")
        if self.backoff_seconds < 0 or self.max_backoff_seconds < 0 or self.circuit_cooldown_seconds < 0:
            raise ValueError("backoff_seconds, max_backoff_seconds and circuit_cooldown_seconds must not be negative")
        if self.circuit_failures < 1:
            raise ValueError("circuit_failures must be at least 1")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {self.base_url!r}")
        if not all(_download_host(host) for host in self.download_hosts):
            raise ValueError(
                "download_hosts must be a list of host names, each with a port if not the default (no scheme or path): "
                '["cdn.example.com", "*.blob.example.net", "media.example.com:8443"]'
            )

    def resilience(self, *, timeout_seconds: float | None) -> Resilience:
        """How the gateway treats the provider; `timeout_seconds` None when the provider times its attempts itself."""
        return Resilience(
            max_attempts=self.max_attempts,
            timeout_seconds=timeout_seconds,
            backoff_seconds=self.backoff_seconds,
            max_backoff_seconds=self.max_backoff_seconds,
            circuit_failures=self.circuit_failures,
            circuit_cooldown_seconds=self.circuit_cooldown_seconds,
            max_concurrent=self.max_concurrent,
        )


def _download_host(entry: str) -> bool:
    match = _HOST.fullmatch(entry)
    return match is not None and (match["port"] is None or 1 <= int(match["port"]) <= 65535)


Status = Literal["live", "legacy", "retired"]


def today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


@dataclass(frozen=True)
class Lifecycle:
    """Where a provider's service stands: live, legacy (still answering, with its end of life), or retired.

    A legacy service whose announced end of life has come reads as retired from that day: the provider
    may stop answering at any time, so vary warns as it does for a retired one.
    """

    status: Status = "live"
    date: datetime.date | None = None  # legacy: the announced end of life; retired: the day it stopped
    note: str = ""  # the provider's own words, or where it says so

    def on(self, day: datetime.date) -> Status:
        """The status on `day`."""
        if self.status == "legacy" and self.date is not None and self.date <= day:
            return "retired"
        return self.status

    def describe(self, day: datetime.date) -> str:
        """The status on `day` in words, with its date (docs/gateway.md's table and the start-up warning)."""
        when = self.date.isoformat() if self.date else None
        if self.status == "legacy" and self.on(day) == "retired":
            return f"retired (its end of life as a legacy service was {when})"
        if self.status == "legacy":
            return f"legacy, end of life {when}" if when else "legacy"
        if self.status == "retired":
            return f"retired since {when}" if when else "retired (no date announced)"
        return "live"

    def warning(self, engine: str, model: str, day: datetime.date | None = None) -> str | None:
        """The start-up line for a catalogue that routes to it, if any."""
        day = day or today()
        if self.on(day) == "live":
            return None
        note = f": {self.note}" if self.note else ""
        consequence = (
            "Its requests may fail at any time; a route then moves on to its next target."
            if self.on(day) == "retired"
            else "Plan to move off it before then."
        )
        return f"model {model!r} uses {engine}, which is {self.describe(day)}{note}. {consequence}"


class HostedProvider(ABC):
    """A hosted provider served under a model name: no weights and no scheduler; `info` says what clients see."""

    # The catalogue engine names this class answers to (one class may serve a family of APIs).
    engines: ClassVar[tuple[str, ...]]
    options_type: ClassVar[type[HostedOptions]] = HostedOptions
    owned_by: ClassVar[str] = "upstream"
    # Per engine name: where the service stands (docs/gateway.md's table is made from these).
    lifecycle: ClassVar[dict[str, Lifecycle]] = {}
    # The provider's documented API, when `base_url` is not given.
    default_base_url: ClassVar[str | None] = None
    # Its documented key variable, when `api_key_env` is not given; None: no key (or the provider's own chain).
    default_api_key_env: ClassVar[str | None] = None
    remote = True

    @classmethod
    def options_for(cls, engine: str, values: Mapping[str, Any]) -> HostedOptions:
        """The options a catalogue entry gives, checked (ValueError says what is wrong) before anything starts."""
        return cls.options_type.of(values)

    @classmethod
    def lifecycle_of(cls, engine: str, options: HostedOptions) -> Lifecycle:
        """Where the service an engine calls stands, for these options (an upstream model may have its own)."""
        return cls.lifecycle.get(engine, Lifecycle())

    def __init__(
        self,
        *,
        name: str,
        engine: str,
        options: HostedOptions,
        license: str | None = None,
        description: str | None = None,
    ) -> None:
        self.kind = engine
        self.options = options
        self.info = ModelInfo(
            id=name,
            owned_by=self.owned_by,
            # Never the base URL: which providers vary uses, and where, is not the clients' business.
            description=description or options.description or self.describe(),
            license=license or "the provider's terms",
            capabilities=self.capabilities(),
        )
        self._open()

    def _open(self) -> None:
        """Open what the provider calls with (its clients), once its options and info are set."""
        return None  # a provider without clients of its own opens nothing

    @property
    def name(self) -> str:
        return self.info.id

    @property
    def base_url(self) -> str | None:
        return self.options.base_url or self.default_base_url

    @property
    def api_key_env(self) -> str | None:
        return self.options.api_key_env or self.default_api_key_env

    @property
    def deadline_seconds(self) -> float:
        return self.options.deadline_seconds

    @property
    def resilience(self) -> Resilience:
        """By default the gateway times each attempt; a provider that times its own answer overrides this."""
        return self.options.resilience(timeout_seconds=self.options.timeout_seconds)

    def secret(self) -> str | None:
        """The key, read from its environment variable at each call (so a rotated key is picked up)."""
        env = self.api_key_env
        return (os.environ.get(env) or None) if env else None

    def describe(self) -> str:
        """The description /v1/models gives when the catalogue gives none."""
        return f"A hosted provider ({self.kind})."

    def capabilities(self) -> Capabilities:
        """What the provider does with a request's controls, for these options."""
        return Capabilities(seed=False, steps=False, guidance_scale=False, img2img=False, max_images=1)

    @abstractmethod
    async def make(self, request: VariationRequest) -> Made:
        """One attempt's n images; raises domain errors, and is cancelled when the client leaves."""

    async def aclose(self) -> None:  # noqa: B027 - a provider with nothing open needs no closing
        """Closes what the provider holds open (connection pools); called once, at shutdown."""
