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
import secrets
import shlex
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
from vary.service.catalogue import Catalogue, CatalogueError, catalogue_for
from vary.service.registry import ModelRegistry
from vary.service.runtime import build_registry
from vary.settings import Settings
from vary.state.connection import DatabaseSetupError, shown
from vary.state.database import Database
from vary.state.image_store import StorageSetupError
from vary.state.stores import open_store

log = logging.getLogger("vary")
T = TypeVar("T")

FIRST_KEY_FILE = "first-api-key"
# Held while a replica checks for a key and makes the first one; a holder that crashed frees it after this.
FIRST_KEY_LEASE = "first-key"
FIRST_KEY_LEASE_SECONDS = 60.0


class ReadyServer(StoppingServer):
    """uvicorn's server, plus the ready block once it listens."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.started:
            self.on_ready()


def serve(settings: Settings, data_dir: DataDir) -> None:
    """Logging is already configured (vary.cli imports this module after it: importing torch logs)."""
    for line in settings.deprecations():
        log.warning(line)
    try:
        catalogue = catalogue_for(settings.catalogue, settings.model)  # every mistake in one line, before loading
    except CatalogueError as exc:
        sys.exit(f"vary: {exc}")
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
        finally:
            db.close()
        store = open_store(settings)
    except (DatabaseSetupError, StorageSetupError) as exc:
        sys.exit(f"vary: {exc}")
    cap_malloc_arenas(settings.malloc_arenas)
    if settings.ray_address:  # the models load in the cluster's replicas, not here
        from vary.cluster.launch import serve_on_ray

        serve_on_ray(settings, key and ready_message(settings, data_dir, key, terminal=sys.stdout.isatty()))
        return
    try:
        registry, decoder = in_background(lambda: load_models(settings))
    except ModelUnavailable:
        sys.exit(1)  # the reason is logged, in one line
    except KeyboardInterrupt:
        sys.exit(130)
    config = uvicorn.Config(
        build_app(settings, registry=registry, decoder=decoder, store=store, checks=checks),
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
    server = ReadyServer(config, on_ready=lambda: announce_ready(settings, data_dir, key, log_format))
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


def load_models(settings: Settings) -> tuple[ModelRegistry, ImageDecoder]:
    """Every model built; the eager ones loaded (the local cache first, the Hub with timeouts) and warmed up."""
    bound_hub_timeouts()
    decoder = ImageDecoder(settings.image_rules())
    registry = build_registry(settings, decoder)
    for engine in registry.to_warm_up():
        engine.warmup()
    return registry, decoder


def first_key(data_dir: Path, db: Database) -> str | None:
    """A key when none is active yet, kept in a 0600 file until the user deletes it; None otherwise.

    Replicas starting at once on one empty database would each see no key and make one: the check and
    the making happen while holding the database's FIRST_KEY_LEASE (race-safe, leases.py), so exactly
    one replica makes it; one that finds the lease held leaves the key to the replica holding it.
    """
    if db.count_active_keys():
        return None  # the common case, a read: no lease (a write) is taken
    holder = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}:{secrets.token_hex(4)}"
    if not db.try_lease(FIRST_KEY_LEASE, holder, FIRST_KEY_LEASE_SECONDS):
        return None  # another replica is making it now
    try:
        if db.count_active_keys():  # made by another replica before the lease was taken
            return None
        _, key = db.create_key("default")
    finally:
        db.release_lease(FIRST_KEY_LEASE, holder)
    data_dir.mkdir(parents=True, exist_ok=True)  # with a database_url, nothing else made it yet
    path = data_dir / FIRST_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)  # also when the file was already there with wider permissions
        file.write(key + "\n")
    log.info("no API key existed, so one was created: it is in %s and is printed once the server is ready", path)
    return key


def keys_command(settings: Settings, data_dir: DataDir) -> str:
    """The `vary keys create` that reaches this server's own key store, as the user would type it."""
    if settings.database_url is not None:
        return "VARY_DATABASE_URL=... vary keys create  (the same database URL as this server)"
    if data_dir.path == default_data_dir():
        return "vary keys create"
    return f"vary keys create --data-dir {shlex.quote(str(data_dir.path))}"


def keys_store(settings: Settings) -> str:
    return shown(settings.database_url) if settings.database_url is not None else str(settings.db_path)


def ready_message(settings: Settings, data_dir: DataDir, key: str | None, *, terminal: bool = True) -> str:
    """The block a start ends with: where everything is, and the first key when one was just made.

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
    key_file = settings.data_dir / FIRST_KEY_FILE
    if key is not None and not terminal:
        lines += [
            f"No API key existed, so one was created: it is in {key_file}, readable by you only "
            "(not printed: stdout is not a terminal). Try it:",
            f'  curl {base}/v1/images/variations -H "Authorization: Bearer $(cat {key_file})" '
            "-F image=@input.png -F size=512x512 -F response_format=url",
        ]
    elif key is not None:
        lines += [
            "No API key existed, so one was created. It is shown only this once (and kept in "
            f"{settings.data_dir / FIRST_KEY_FILE}, readable by you only, until you delete it):",
            key,
            "Try it:",
            f'  curl {base}/v1/images/variations -H "Authorization: Bearer {key}" '
            "-F image=@input.png -F size=512x512 -F response_format=url",
        ]
    return "\n".join(lines)


def announce_ready(settings: Settings, data_dir: DataDir, key: str | None, log_format: str) -> None:
    """The ready block: printed on a text log (the person at the terminal); one record in a JSON log, plus the
    first key printed, as it must be seen once."""
    if log_format == "text" or key is not None:
        # stdout, after the log's lines on stderr: flushed so that the block is the last thing on the screen.
        sys.stderr.flush()
        terminal = sys.stdout.isatty()
        print(f"\n{ready_message(settings, data_dir, key, terminal=terminal)}\n", flush=True)  # set apart from the log
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
