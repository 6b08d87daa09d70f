from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from vary.db import Database

STARTUP_TIMEOUT_S = 120.0


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VaryServer:
    """A real `vary serve` process on a loopback port, started and stopped by its own pid."""

    data_dir: Path
    model: str = "tiny-random"
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VaryServer:
        self.port = self.port or free_port()
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "vary",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--model",
            self.model,
            *self.extra_args,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vary serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # readiness poll interval, bounded by the deadline above
        self.stop()
        raise RuntimeError(f"vary serve did not become ready in {STARTUP_TIMEOUT_S}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def create_key(data_dir: Path, name: str = "test") -> tuple[str, str]:
    db = Database(data_dir / "vary.db")
    try:
        info, key = db.create_key(name)
        return info.id, key
    finally:
        db.close()


@pytest.fixture(scope="session")
def server_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vary-data")


@pytest.fixture(scope="session")
def api_key(server_data_dir: Path) -> str:
    return create_key(server_data_dir)[1]


@pytest.fixture(scope="session")
def server(server_data_dir: Path, api_key: str) -> Iterator[VaryServer]:
    """One shared tiny-random server for the tests that do not restart or reconfigure it."""
    srv = VaryServer(server_data_dir).start()
    yield srv
    srv.stop()


@pytest.fixture()
def http(server: VaryServer, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as c:
        yield c
