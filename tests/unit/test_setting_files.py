"""VARY_<SETTING>_FILE reads a setting from a file (Docker's and Kubernetes' secrets), and
VARY_DATABASE_PASSWORD keeps the database's password out of its URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vary.settings import Settings


def test_a_setting_is_read_from_its_file_and_the_variable_itself_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s" * 40
    (tmp_path / "signing").write_text(secret + "\n")  # as `echo ... > file` writes it
    (tmp_path / "url").write_text("postgresql+psycopg://vary@db:5432/vary")
    monkeypatch.setenv("VARY_SIGNING_SECRET_FILE", str(tmp_path / "signing"))
    monkeypatch.setenv("VARY_DATABASE_URL_FILE", str(tmp_path / "url"))
    settings = Settings()
    assert settings.signing_secret is not None and settings.signing_secret.get_secret_value() == secret
    assert settings.database_url == "postgresql+psycopg://vary@db:5432/vary"
    monkeypatch.setenv("VARY_DATABASE_URL", "postgresql+psycopg://other@db2/vary")
    assert Settings().database_url == "postgresql+psycopg://other@db2/vary"
    # A flag (an init argument) wins over both.
    assert Settings(database_url="sqlite:///x.db").database_url == "sqlite:///x.db"


def test_the_database_password_joins_a_url_without_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "password").write_text("p@ss:word/1\n")
    monkeypatch.setenv("VARY_DATABASE_PASSWORD_FILE", str(tmp_path / "password"))
    settings = Settings(database_url="postgresql+psycopg://vary@db:5432/vary")
    assert settings.database == "postgresql+psycopg://vary:p%40ss%3Aword%2F1@db:5432/vary"
    assert "p@ss" not in repr(settings)  # a SecretStr: masked wherever settings are shown
    # A URL with its own password keeps it; without a URL the data dir's SQLite file is used.
    assert Settings(database_url="postgresql+psycopg://vary:own@db/vary").database.endswith(":own@db/vary")  # type: ignore[union-attr]
    assert Settings(data_dir=tmp_path).database == tmp_path / "vary.db"


def test_a_file_that_cannot_be_read_ends_the_command_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = subprocess.run(
        [sys.executable, "-m", "vary", "keys", "list", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VARY_SIGNING_SECRET_FILE": str(missing)},
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"vary: VARY_SIGNING_SECRET_FILE: No such file or directory: {missing}"
