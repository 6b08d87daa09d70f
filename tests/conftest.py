"""The suite's fixtures: a throwaway home, one shared tiny-random server, and `start_server` for a test's own.

The helpers (`png_bytes`, `decode_png`, `create_key`) live in tests/harness.py and are named here too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import Running, create_key, decode_png, png_bytes, serve
from vary.testing import ServerProcess

__all__ = ["create_key", "decode_png", "png_bytes"]


@pytest.fixture(scope="session", autouse=True)
def _no_writes_to_the_real_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A command a test starts without --data-dir uses a throwaway per-user data dir, never the real one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data-home")))
        yield


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One shared tiny-random server for the tests that do not restart or reconfigure it."""
    with serve(tmp_path_factory.mktemp("vary")) as vary:
        yield vary


@pytest.fixture(scope="session")
def server(shared_server: Running) -> ServerProcess:
    return shared_server.server


@pytest.fixture(scope="session")
def server_data_dir(shared_server: Running) -> Path:
    return shared_server.data_dir


@pytest.fixture(scope="session")
def api_key(shared_server: Running) -> str:
    return shared_server.key


@pytest.fixture()
def http(shared_server: Running) -> Iterator[httpx.Client]:
    with shared_server.http(timeout=60) as client:
        yield client


@pytest.fixture()
def start_server(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Starts a `vary serve` with serve()'s options, on `tmp_path / "data"` unless given another root; every
    one it started is stopped when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(root: Path = tmp_path, **options: Any) -> Running:
            return stack.enter_context(serve(root, **options))

        yield start
