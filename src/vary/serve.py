"""`vary serve`: check the catalogue, make the first key if none exists, run uvicorn, say when it is ready.

The first key is written to a file readable only by its owner as soon as it exists (a start that
fails later does not lose it) and printed once the server answers, after the loading's output, with
the URL and a curl line to paste.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import uvicorn

from vary.datadir import DataDir
from vary.settings import Settings

log = logging.getLogger("vary")

FIRST_KEY_FILE = "first-api-key"


class ReadyServer(uvicorn.Server):
    """uvicorn's server, plus a message printed once it listens."""

    def __init__(self, config: uvicorn.Config, on_ready: str | None) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets=sockets)  # type: ignore[arg-type]
        if self.started and self.on_ready:
            print(self.on_ready, flush=True)  # stdout, for the person at the terminal; the log is stderr


def serve(settings: Settings, data_dir: DataDir) -> None:
    from vary.logs import configure_logging

    # First: importing the ML libraries below already logs, and those lines must be in the log's format.
    configure_logging(settings.log_format, level=settings.log_level)

    from vary.app import build_app
    from vary.config import ConfigError, catalogue_for
    from vary.http_protocol import vary_http_protocol
    from vary.memory import cap_malloc_arenas

    try:
        catalogue_for(settings.config, settings.model)  # every mistake in one line, before anything loads
    except ConfigError as exc:
        sys.exit(f"vary: {exc}")
    log.info(data_dir.line())
    cap_malloc_arenas(settings.malloc_arenas)
    key = None if settings.no_auth else first_key(settings.data_dir)
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # configure_logging's handlers stay
        access_log=False,  # vary.access writes one line per request instead, without query strings
        # SIGTERM: stop accepting, let requests in flight finish for this long, then shut the models down.
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        http=vary_http_protocol(settings.header_timeout_seconds),
    )
    server = ReadyServer(config, on_ready=key and ready_message(settings, key))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's own code for a failed start


def first_key(data_dir: Path) -> str | None:
    """A key when none is active yet, kept in a 0600 file until the user deletes it; None otherwise."""
    from vary.db import Database

    db = Database(data_dir / "vary.db")
    try:
        if db.count_active_keys():
            return None
        _, key = db.create_key("default")
    finally:
        db.close()
    path = data_dir / FIRST_KEY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)  # also when the file was already there with wider permissions
        file.write(key + "\n")
    log.info("no API key existed, so one was created: it is in %s and is printed once the server is ready", path)
    return key


def ready_message(settings: Settings, key: str) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    base = f"http://{host}:{settings.port}"
    return "\n".join(
        (
            f"vary is ready: {base}/ (playground), {base}/v1 (API).",
            "No API key existed, so one was created. It is shown only this once (and kept in "
            f"{settings.data_dir / FIRST_KEY_FILE}, readable by you only, until you delete it):",
            key,
            "Try it:",
            f'  curl {base}/v1/images/variations -H "Authorization: Bearer {key}" '
            "-F image=@input.png -F size=512x512 -F response_format=url",
        )
    )
