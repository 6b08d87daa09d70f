"""`vary serve`: check the catalogue, make the first key if none exists, load the models, run uvicorn, say
when it is ready.

The eager models load before uvicorn starts, in a daemon thread the main thread waits on, so SIGTERM
and Ctrl-C stop a start at any moment: uvicorn, loading in its lifespan, would only note the signal
and wait for the load to finish. (A worker thread, as before: torch's CPU kernels ran many times
slower in the main thread of a busy machine.)
Weights that cannot be had end the start with one logged line and exit status 1.

Every start ends with the ready block, once the server answers: where the playground, the API and
its docs are, and where the keys live with the command that makes one there. A terminal gets it as
text, last; a JSON log gets it as one record. The first key is written to a file readable only by
its owner as soon as it exists (a start that fails later does not lose it) and printed in the ready
block, with a curl line to paste. (A busy address is found before this module is even imported:
cli/address.py.)
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn, TypeVar

import uvicorn

from vary.app import build_app, http_protocol
from vary.cli.stopping import StoppingServer
from vary.datadir import DataDir, default_data_dir, make_private_dir
from vary.engines.weights import bound_hub_timeouts
from vary.errors import ModelUnavailable
from vary.imaging import ImageDecoder
from vary.ops.logs import resolved_format
from vary.ops.memory import cap_malloc_arenas
from vary.ops.traces import TracingSetupError, configure_tracing
from vary.safety.checks import ContentChecks
from vary.safety.classifier import ClassifierFailed
from vary.safety.policy import SafetyPolicy
from vary.service.catalogue import Catalogue, CatalogueError, catalogue_for, lifecycle_warnings
from vary.service.registry import ModelRegistry
from vary.service.runtime import build_registry
from vary.settings import Settings
from vary.state.connection import DatabaseSetupError, shown
from vary.state.database import Database
from vary.state.first_key import FIRST_KEY_FILE, first_key, unused_first_key
from vary.state.image_store import StorageSetupError
from vary.state.stores import open_store

log = logging.getLogger("vary")
T = TypeVar("T")


class ReadyServer(StoppingServer):
    """uvicorn's server (stopping as cli/stopping.py says), plus the ready block once it listens, and a drain
    window on SIGTERM.

    Drain: the first SIGTERM calls `on_drain` (/readyz fails from then on) and the server goes on serving
    for `drain_seconds`, new connections included, so that a load balancer sees the failing /readyz and
    stops sending before anything is refused; then uvicorn's own shutdown stops accepting and lets the
    requests in flight finish. A second SIGTERM, or Ctrl-C, ends the window at once.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        on_ready: Callable[[], None],
        *,
        drain_seconds: float = 0.0,
        on_drain: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(config)
        self.on_ready = on_ready
        self.drain_seconds = drain_seconds
        self.on_drain = on_drain
        self.drain_until: float | None = None

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.started:
            self.on_ready()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_seconds > 0 and self.drain_until is None and not self.should_exit:
            self._captured_signals.append(sig)  # re-raised after the shutdown, as uvicorn does: exit by SIGTERM
            self.drain_until = time.monotonic() + self.drain_seconds
            self.on_drain()
            log.info("SIGTERM: draining for %g s (/readyz answers 503), then shutting down", self.drain_seconds)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True  # the window is over: uvicorn's graceful shutdown from here
        return await super().on_tick(counter)


def serve(settings: Settings, data_dir: DataDir) -> None:
    """Logging is already configured (vary.cli imports this module after it: importing torch logs)."""
    for line in settings.deprecations():
        log.warning(line)
    try:
        # Every mistake in one line, before loading: an unaccepted licence too.
        catalogue = catalogue_for(settings.catalogue, settings.model, settings.accept_license)
    except CatalogueError as exc:
        sys.exit(f"vary: {exc}")
    for line in lifecycle_warnings(catalogue):  # once, at start: a provider that is gone or going
        log.warning(line)
    checks = content_checks(settings, catalogue)
    log.info(data_dir.line())
    make_private_dir(settings.data_dir)  # before anything is written there; an older vary made it 0755
    try:
        configure_tracing()  # the standard OTEL_* variables; off without them
    except TracingSetupError as exc:
        sys.exit(f"vary: {exc}")
    try:  # a database or store that cannot be used ends the start in one line, before any model loads
        db = Database.open(settings.database)  # its schema upgraded first (vary/migrations), as the lifespan would
        try:
            key = None if settings.no_auth else first_key(settings.data_dir, db)
            # A start that failed after making the first key never showed it: shown again until used or deleted.
            earlier = key is None and not settings.no_auth
            if earlier:
                key = unused_first_key(settings.data_dir, db)
        finally:
            db.close()
        store = open_store(settings)
    except (DatabaseSetupError, StorageSetupError) as exc:
        sys.exit(f"vary: {exc}")
    cap_malloc_arenas(settings.malloc_arenas)
    if settings.ray_address:  # the models load in the cluster's replicas, not here
        from vary.cluster.launch import serve_on_ray

        serve_on_ray(
            settings, key and ready_message(settings, data_dir, key, terminal=sys.stdout.isatty(), earlier=earlier)
        )
        return
    # Ctrl-C stops the load even where SIGINT came ignored from the parent (a `&` in a script leaves it so):
    # uvicorn handles it later whatever it inherited, so the load does too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        registry, decoder = in_background(lambda: load_models(settings))
    except ModelUnavailable:
        sys.exit(1)  # the reason is logged, in one line
    except KeyboardInterrupt:
        stop_now(130)
    app = build_app(settings, registry=registry, decoder=decoder, store=store, checks=checks)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # configure_logging's handlers stay
        access_log=False,  # vary.access writes one line per request instead, without query strings
        # SIGTERM: stop accepting, let requests in flight finish for this long, then shut the models down.
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        http=http_protocol(settings),
        ws="none",  # no WebSocket routes: an upgrade is answered as the plain request it is (http_protocol.py)
    )
    log_format = resolved_format(settings.log_format)
    server = ReadyServer(
        config,
        on_ready=lambda: announce_ready(settings, data_dir, key, log_format, earlier=earlier),
        drain_seconds=settings.drain_seconds,
        on_drain=app.state.readiness.drain,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's own code for a failed start


def content_checks(settings: Settings, catalogue: Catalogue) -> ContentChecks:
    """The content classifiers the models' policies name, loaded before the models: a missing package, a
    changed model file or an unknown label ends the start in one line."""
    try:
        default = SafetyPolicy.of_settings(settings)
    except ValueError as exc:
        sys.exit(f"vary: VARY_SAFETY_*: {exc}")
    checks = ContentChecks()
    try:
        checks.load(entry.safety_policy(default) for entry in catalogue.models)
    except ClassifierFailed as exc:
        sys.exit(f"vary: the content policy's classifier cannot be used: {exc}")
    return checks


def in_background(work: Callable[[], T]) -> T:
    """`work`'s result, computed in a daemon thread: the main thread stays free for signals, and an exit
    does not wait for a load stuck in the Hub or in torch."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the main thread, which decides
            outcome["error"] = exc
        finished.set()
        # The thread stays (idle) for the process's life: when a thread that ran torch's CPU kernels exits,
        # its OpenMP team goes with it, and generation on the scheduler's thread then ran ~8x slower here.
        threading.Event().wait()

    finished = threading.Event()

    thread = threading.Thread(target=run, name="vary-load", daemon=True)
    thread.start()
    while not finished.wait(0.5):  # short waits: Python runs signal handlers between them
        pass
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def stop_now(status: int) -> NoReturn:
    """Ends a start stopped while loading, at once. Nothing open needs closing (the database was closed before
    the load, the load's thread is abandoned), and the interpreter's own teardown, collecting torch's objects,
    took about 2 s here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def load_models(settings: Settings) -> tuple[ModelRegistry, ImageDecoder]:
    """Every model built; the eager ones loaded (the local cache first, the Hub with timeouts) and warmed up."""
    bound_hub_timeouts()
    decoder = ImageDecoder(settings.image_rules())
    registry = build_registry(settings, decoder)
    for engine in registry.to_warm_up():
        engine.warmup()
    return registry, decoder


def keys_command(settings: Settings, data_dir: DataDir) -> str:
    """The `vary keys create` that reaches this server's own key store, as the user would type it."""
    if settings.database_url is not None:
        return "VARY_DATABASE_URL=... vary keys create  (the same database URL as this server)"
    if data_dir.path == default_data_dir():
        return "vary keys create"
    return f"vary keys create --data-dir {shlex.quote(str(data_dir.path))}"


def keys_store(settings: Settings) -> str:
    return shown(settings.database_url) if settings.database_url is not None else str(settings.db_path)


def ready_message(
    settings: Settings, data_dir: DataDir, key: str | None, *, terminal: bool = True, earlier: bool = False
) -> str:
    """The block a start ends with: where everything is, and the first key when one was just made (or, with
    `earlier`, made by a start that never got this far, and not used since).

    The key itself only for a person at a terminal: a log collector (journald, a container's log) keeps
    stdout, and the key is in its 0600 file anyway."""
    base = base_url(settings)
    lines = [
        "vary is ready.",
        f"  Playground: {base}/",
        f"  API:        {base}/v1  (docs: {base}/docs)",
    ]
    if settings.no_auth:
        lines.append("  Keys:       none needed (--no-auth)")
    else:
        lines.append(f"  Keys:       in {keys_store(settings)}; make one with: {keys_command(settings, data_dir)}")
    if key is None:
        return "\n".join(lines)
    key_file = settings.data_dir / FIRST_KEY_FILE
    if earlier:  # shown at every start until it is used or its file deleted
        said = f"The first API key, made by an earlier start, has not been used yet. It is in {key_file}"
    else:
        said = f"No API key existed, so one was created. It is in {key_file}"
    said += ", readable by you only, until you delete it"
    form = "-F image=@input.png -F size=512x512 -F response_format=url"
    if not terminal:
        shown_key = f"$(cat {key_file})"
        lines.append(f"{said} (not printed: stdout is not a terminal). Try it:")
    else:
        shown_key = key
        lines += [f"{said}:", key, "Try it:"]
    lines.append(f'  curl {base}/v1/images/variations -H "Authorization: Bearer {shown_key}" {form}')
    return "\n".join(lines)


def announce_ready(
    settings: Settings, data_dir: DataDir, key: str | None, log_format: str, *, earlier: bool = False
) -> None:
    """The ready block: printed on a text log (the person at the terminal); one record in a JSON log, plus the
    first key printed, as it must be seen once."""
    if log_format == "text" or key is not None:
        # stdout, after the log's lines on stderr: flushed so that the block is the last thing on the screen.
        sys.stderr.flush()
        terminal = sys.stdout.isatty()
        block = ready_message(settings, data_dir, key, terminal=terminal, earlier=earlier)
        print(f"\n{block}\n", flush=True)  # set apart from the log
        return
    base = base_url(settings)
    keys = "none needed (--no-auth)" if settings.no_auth else f"in {keys_store(settings)}"
    log.info(
        "vary is ready: %s/ (playground), %s/v1 (API), %s/docs (API docs); keys %s",
        *(base, base, base, keys),
        extra={"keys_command": None if settings.no_auth else keys_command(settings, data_dir)},
    )


def base_url(settings: Settings) -> str:
    """The URL a browser on this machine reaches the server at."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"
