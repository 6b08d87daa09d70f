"""Hints that lead somewhere: the 401 names the way to the server's own key store (never its paths), the key
commands say when a data dir holds no database and make none when only reading, `vary --version`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.e2e.terminal import console_script
from vary.testing import ServerProcess


def vary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*console_script(), *args], capture_output=True, text=True, timeout=120)


def test_the_wrong_key_hint_leads_to_the_servers_store_without_naming_its_paths(
    server: ServerProcess, server_data_dir: Path
) -> None:
    refused = httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": "Bearer vary-nope"}, timeout=30)
    assert refused.status_code == 401
    message = refused.json()["error"]["message"]
    assert "vary keys create" in message and "--data-dir" in message and "VARY_DATA_DIR" in message
    assert str(server_data_dir) not in message and "vary.db" not in message  # a client learns no server path


def test_reading_commands_on_a_data_dir_without_a_database_say_so_and_make_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "typo"
    for command in (["keys", "list"], ["usage"], ["keys", "revoke", "abc"], ["db", "current"]):
        done = vary(*command, "--data-dir", str(empty))
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert done.stdout == ""  # no empty table
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"vary: no database in {empty}: no server has run with this data dir"), last
        assert "Traceback" not in done.stderr
        assert not empty.exists(), f"{command} made {empty}"


def test_creating_a_key_in_a_new_data_dir_says_a_database_is_made(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    done = vary("keys", "create", "--data-dir", str(fresh))
    assert done.returncode == 0, done.stderr
    assert f"vary: no database in {fresh} yet: making one" in done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("vary-")
    listed = vary("keys", "list", "--data-dir", str(fresh))
    assert listed.returncode == 0 and "making one" not in listed.stderr and "default" in listed.stdout


def test_version() -> None:
    from importlib.metadata import version

    done = vary("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"vary {version('vary')}"
