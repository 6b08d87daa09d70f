"""A real Prometheus server for the tests (Debian's `prometheus` package), on a free loopback port in a temp
dir, with a configuration the test writes; stopped by its own process id.

Skips where no prometheus binary is installed, unless VARY_REQUIRE_PROMETHEUS=1 (CI), where that fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from vary.testing import free_port

START_TIMEOUT = 60.0


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("VARY_REQUIRE_PROMETHEUS"):
            pytest.fail("VARY_REQUIRE_PROMETHEUS is set but there is no prometheus binary: apt-get install prometheus")
        pytest.skip("no prometheus binary (Debian: apt-get install prometheus)")
    return found


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (or scalar, as one sample)."""
        answer = httpx.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=30).json()
        assert answer["status"] == "success", f"{expr}: {answer}"
        data = answer["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.base_url}/api/v1/targets", timeout=30).json()
        active: list[dict[str, Any]] = answer["data"]["activeTargets"]
        return active

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_prometheus(config: dict[str, Any]) -> Prometheus:
    binary = prometheus_binary()
    directory = Path(tempfile.mkdtemp(prefix="vary-prometheus-"))
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(directory / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                # Debian's build looks for its console templates here; none are used.
                f"--web.console.templates={directory}",
                f"--web.console.libraries={directory}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(process, port, directory)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            log_text = server.log()
            server.stop()
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{log_text}")
        try:
            if httpx.get(f"{server.base_url}/-/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            log_text = server.log()
            server.stop()
            raise RuntimeError(f"prometheus was not ready in {START_TIMEOUT}s:\n{log_text}")
        time.sleep(0.2)  # readiness poll, bounded by the deadline
