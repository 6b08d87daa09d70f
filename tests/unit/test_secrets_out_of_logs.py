"""No secret in the log: URLs' query strings redacted, client libraries quiet, the first key for a terminal only."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from vary.cli.serve import ready_message
from vary.datadir import DataDir
from vary.ops.logs import QUIET_LOGGERS, configure_logging, redact_urls
from vary.settings import Settings


def test_query_strings_of_urls_are_redacted() -> None:
    line = 'HTTP Request: GET https://cdn.example/a.png?se=2030&sig=SECRET "HTTP/1.1 200 OK"'
    assert redact_urls(line) == 'HTTP Request: GET https://cdn.example/a.png?[redacted] "HTTP/1.1 200 OK"'
    assert redact_urls('{"url": "s3://b/k?X-Amz-Security-Token=T"}') == '{"url": "s3://b/k?[redacted]"}'
    assert redact_urls("is it ready? yes") == "is it ready? yes"


@pytest.fixture()
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_client_libraries_log_warnings_only_even_at_debug(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", level="debug")
    for name in QUIET_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
    logging.getLogger("httpx").info("HTTP Request: GET https://cdn.example/a.png?sig=SECRET")
    logging.getLogger("vary.test").info("fetched https://cdn.example/a.png?sig=SECRET")
    err = capsys.readouterr().err
    assert "SECRET" not in err and "fetched https://cdn.example/a.png?[redacted]" in err


def test_the_first_key_is_printed_to_a_terminal_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, port=8123)
    data_dir = DataDir(tmp_path, "--data-dir")
    key = "vary-abcd1234-SECRETSECRET"
    assert key in ready_message(settings, data_dir, key, terminal=True)
    elsewhere = ready_message(settings, data_dir, key, terminal=False)
    assert key not in elsewhere and str(tmp_path / "first-api-key") in elsewhere
