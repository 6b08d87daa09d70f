"""A real `vary serve` in a subprocess on a free loopback port, for tests and benchmarks.

It is started and stopped by its own process id; readiness is polled with a bounded timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    data_dir: Path
    model: str = "tiny-random"
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0  # 0: a free one
    startup_timeout: float = 120.0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.port = self.port or free_port()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server-{self.port}.log"
        cmd = [
            *(sys.executable, "-m", "vary", "serve", "--port", str(self.port)),
            *("--data-dir", str(self.data_dir), "--model", self.model, *self.extra_args),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout
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
        raise RuntimeError(f"vary serve did not become ready in {self.startup_timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 60.0) -> bool:
        """Whether `text` shows up in the log in time; the server writes some lines after it has responded."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)  # poll interval, bounded by the deadline
        return True

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def running(*servers: ServerProcess) -> Iterator[tuple[ServerProcess, ...]]:
    """Starts the servers in order (replicas of one deployment); stops each one started, whatever happens."""
    with contextlib.ExitStack() as stack:
        yield tuple(stack.enter_context(server) for server in servers)
