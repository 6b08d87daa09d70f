from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from vary.state.database import Database
from vary.testing import ServerProcess


def png_bytes(size: int | tuple[int, int] = 64, mode: str = "RGB", color: object = None, **save: object) -> bytes:
    dims = (size, size) if isinstance(size, int) else size
    if color is None:
        color = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 128), "L": 90, "LA": (90, 128), "P": 3, "1": 1}.get(
            mode, 1
        )
    buf = io.BytesIO()
    Image.new(mode, dims, color).save(buf, format="PNG", **save)
    return buf.getvalue()


def decode_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    img.load()
    return img


def create_key(data_dir: Path, name: str = "test") -> tuple[str, str]:
    db = Database.open(data_dir / "vary.db")
    try:
        info, key = db.create_key(name)
        return info.id, key
    finally:
        db.close()


@pytest.fixture(scope="session", autouse=True)
def _no_writes_to_the_real_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A command a test starts without --data-dir uses a throwaway per-user data dir, never the real one."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data-home")))
        yield


@pytest.fixture(scope="session")
def server_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vary-data")


@pytest.fixture(scope="session")
def api_key(server_data_dir: Path) -> str:
    return create_key(server_data_dir)[1]


@pytest.fixture(scope="session")
def server(server_data_dir: Path, api_key: str) -> Iterator[ServerProcess]:
    """One shared tiny-random server for the tests that do not restart or reconfigure it."""
    srv = ServerProcess(server_data_dir).start()
    yield srv
    srv.stop()


@pytest.fixture()
def http(server: ServerProcess, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as c:
        yield c
