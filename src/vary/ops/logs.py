"""Logging set-up: one JSON object per line (python-json-logger), or plain text for a terminal.

`auto` (the default) picks text when the log goes to a terminal, where a person reads it, and JSON
otherwise (a file, a pipe, a container's log collector).

Everything a start prints goes through the one handler: Python warnings, and the loggers of
transformers, diffusers and huggingface_hub (each ships its own stderr handler, in its own format).
Progress bars are for a terminal, so `vary serve` turns them off; `vary pull` keeps them.

No secret reaches the log through a URL: the query string of every URL in a line is replaced by
`?[redacted]` (providers' signed download URLs, presigned S3 URLs, vary's own signed image URLs), and the
HTTP and AWS client libraries log at WARNING and above only, at every level (httpx writes each request's
URL at INFO; botocore writes credentials and X-Amz-Security-Token at DEBUG).
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import datetime, timezone

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Control characters written as escapes, so that a newline in a request's path cannot forge a log line.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


# A URL's query string, up to what ends a URL in a line of text or JSON.
_QUERY = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")
# Loggers of the clients vary calls providers and stores with: requests' URLs at INFO, credentials at DEBUG.
QUIET_LOGGERS = ("httpx", "httpcore", "httpx2", "botocore", "boto3", "s3transfer", "urllib3", "aiobotocore")


def rfc3339(created: float, *, utc: bool) -> str:
    """A record's time as RFC 3339 with milliseconds: UTC with a Z for machines, local with its offset for people."""
    moment = datetime.fromtimestamp(created, timezone.utc)
    if utc:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.astimezone().isoformat(timespec="milliseconds")


def redact_urls(text: str) -> str:
    """`text` with the query string of every URL in it replaced: signatures and tokens live there."""
    return _QUERY.sub(r"\1?[redacted]", text)


class EscapingFormatter(logging.Formatter):
    """Plain text, one line per record: the message's control characters escaped (tracebacks stay as they are)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's own name
        return super().formatMessage(record).translate(_ESCAPES)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record.created, utc=False)

    def format(self, record: logging.LogRecord) -> str:
        return redact_urls(super().format(record))


class RedactingJsonFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_urls(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return rfc3339(record.created, utc=True)  # log collectors parse it without a format string


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
# Notices that carry nothing for a vary user: vary uses the PIL image processors on purpose.
SILENCED = ("requires torchvision (not installed)",)


def resolved_format(log_format: str) -> str:
    """`json` or `text`: `auto` is text on a terminal."""
    if log_format != "auto":
        return log_format
    return "text" if sys.stderr.isatty() else "json"


def configure_logging(log_format: str, *, level: str = "info", progress_bars: bool = False) -> str:
    """Sets up the one handler; returns the format used (`auto` resolved)."""
    log_format = resolved_format(log_format)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            RedactingJsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                reserved_attrs=[*RESERVED_ATTRS, "color_message"],  # uvicorn's ANSI-coloured copy of the message
            )
        )
    else:
        handler.setFormatter(EscapingFormatter(TEXT_FORMAT))
    handler.addFilter(_not_silenced)
    if log_format == "text":  # the ready block says where vary listens; uvicorn's start-up steps are noise there
        handler.addFilter(_not_uvicorn_startup)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # uvicorn's own loggers propagate to ours; its access log is replaced by vary.access's line.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in QUIET_LOGGERS:  # at every level: their INFO has URLs, their DEBUG credentials
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn(...) becomes a record of the py.warnings logger
    _adopt_library_loggers()
    if not progress_bars:
        _disable_progress_bars()
    return log_format


UVICORN_STARTUP: tuple[str, ...] = ("Started server process", "Waiting for application startup")
UVICORN_STARTUP += ("Application startup complete", "Uvicorn running on")


def _not_uvicorn_startup(record: logging.LogRecord) -> bool:
    return not (record.name == "uvicorn.error" and record.getMessage().startswith(UVICORN_STARTUP))


def _not_silenced(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(text in message for text in SILENCED)


def _adopt_library_loggers() -> None:
    """The ML libraries' loggers lose their own handlers and propagate to ours, keeping their levels.

    Imported here: logging is configured before they load (they log as they import), and commands that
    never use them never import them."""
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils.logging as hub_logging
    import transformers.utils.logging as transformers_logging

    for library in (transformers_logging, diffusers_logging):
        library.disable_default_handler()  # configures the library's logger first, so nothing re-adds it
        library.enable_propagation()
    hub_logging.get_logger()  # the same for huggingface_hub, which has no disable_default_handler
    logging.getLogger("huggingface_hub").handlers[:] = []
    hub_logging.enable_propagation()


def _disable_progress_bars() -> None:
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from huggingface_hub.utils.tqdm import disable_progress_bars

    disable_progress_bars()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
