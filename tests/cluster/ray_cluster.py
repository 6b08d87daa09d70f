"""A real local Ray cluster for the tests: `ray start --head --block` on loopback, on free ports, in its own temp dir.

It is stopped by its own process ids: SIGTERM to the blocking `ray start` (which stops what it started),
then SIGKILL by pid to any process of its session still alive. Never `ray stop`: that stops every
cluster on the machine, other sessions' included.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.processes import alive
from vary.testing import free_port

RAY_CPUS = 4  # logical CPUs the cluster offers: replicas ask for fractions of one (the machine has 2 cores)
START_TIMEOUT = 180.0


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray() -> None:
    """Skips without Ray, unless VARY_REQUIRE_RAY=1 (CI), where a missing Ray fails."""
    if ray_available():
        return
    if os.environ.get("VARY_REQUIRE_RAY"):
        pytest.fail('VARY_REQUIRE_RAY is set but Ray Serve is not importable: pip install "vary[cluster]"')
    pytest.skip('Ray Serve is not installed (pip install "vary[cluster]")')


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _worker_port_range(count: int = 200) -> tuple[int, int]:
    """A random range of free ports for the cluster's workers, so parallel sessions do not collide.

    Below the kernel's ephemeral range, where free_port() finds the cluster's other ports."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        low = random.randrange(10000, max(10001, ephemeral_low - count))
        if all(_port_is_free(port) for port in range(low, low + count, 10)):
            return low, low + count - 1
    raise RuntimeError("no free port range for Ray's workers")


@dataclass
class RayCluster:
    address: str
    temp_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    # Serve's HTTP proxy: its options are fixed by the first Serve start on a cluster, so every
    # application a test runs on this cluster listens here.
    serve_port: int = field(default_factory=free_port)
    # The node's Ray metrics agent: every replica's metrics, vary's included (vary/cluster/metrics_export.py).
    metrics_port: int = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def session_pids(self) -> set[int]:
        """The processes of this cluster: the descendants of its `ray start`, and any process whose command
        line names its temp dir (Ray passes it to the processes it starts; workers retitle themselves)."""
        marker = str(self.temp_dir).encode()
        parents: dict[int, int] = {}
        pids = set()
        for pid, ppid, cmdline in _processes():
            parents[pid] = ppid
            if marker in cmdline and pid != os.getpid():
                pids.add(pid)
        for pid in parents:
            ancestor, seen = parents.get(pid), 0
            while ancestor and seen < 64:
                if ancestor == self.process.pid:
                    pids.add(pid)
                    break
                ancestor, seen = parents.get(ancestor), seen + 1
        return pids

    def pids_titled(self, prefix: str) -> list[int]:
        """This cluster's processes whose title (Ray's workers set it, e.g. "ray::ServeReplica:...") starts so."""
        titles = {pid: cmdline for pid, _, cmdline in _processes()}
        return sorted(pid for pid in self.session_pids() if titles.get(pid, b"").startswith(prefix.encode()))

    def stop(self) -> None:
        before = self.session_pids()
        # SIGTERM to every process of this cluster at once (its own ids): one at a time, through `ray start
        # --block`, takes half a minute as each waits for the others.
        for pid in before:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)  # its children were told already; it may linger on its own
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        deadline = time.monotonic() + 5  # then the leftovers are killed, by pid
        left = {pid for pid in before if alive(pid)}
        while left and time.monotonic() < deadline:
            time.sleep(0.5)  # bounded wait for the cluster's own shutdown to finish
            left = {pid for pid in left if alive(pid)}
        for pid in left | {pid for pid in self.session_pids() if alive(pid)}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)


def _processes() -> Iterator[tuple[int, int, bytes]]:
    """(pid, parent pid, command line) of every process, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        yield int(entry.name), ppid, cmdline


def start_cluster(num_cpus: int = RAY_CPUS) -> RayCluster:
    # Short: Ray's unix socket paths live under it and must stay under 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    gcs_port = free_port()
    metrics_port = free_port()
    low, high = _worker_port_range()
    ray_bin = Path(sys.executable).parent / "ray"
    command = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={metrics_port}",
        f"--min-worker-port={low}",
        f"--max-worker-port={high}",
        "--object-store-memory=200000000",
    ]
    log_path = Path(tempfile.gettempdir()) / f"{temp_dir.name}-ray-start.log"
    # Metrics reach the agent every second, not every 10 (tests/cluster/test_ray_metrics.py waits for them).
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "RAY_metrics_report_interval_ms": "1000",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    cluster = RayCluster(f"127.0.0.1:{gcs_port}", temp_dir, process, log_path, metrics_port=metrics_port)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = cluster.log()
            cluster.stop()
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log}")
        if _accepts(gcs_port) and _has_raylet(temp_dir):
            return cluster
        time.sleep(0.5)  # readiness poll, bounded by the deadline
    log = cluster.log()
    cluster.stop()
    raise RuntimeError(f"the Ray cluster did not start in {START_TIMEOUT}s:\n{log}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _has_raylet(temp_dir: Path) -> bool:
    """The node is up once its raylet socket exists in the session dir."""
    return any(temp_dir.glob("session_*/sockets/raylet*"))


# Package scope: an idle cluster (its Serve controller polls) would slow the rest of the suite on two cores.
@pytest.fixture(scope="package", name="ray_cluster")
def ray_cluster_fixture() -> Iterator[RayCluster]:
    require_ray()
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module", name="ray_driver")
def ray_driver_fixture(ray_cluster: RayCluster) -> Iterator[Any]:
    """This test process connected to the cluster as a driver: Ray Serve's Python API (`serve.status()`...)."""
    import ray
    from ray import serve

    ray.init(address=ray_cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield serve
    finally:
        ray.shutdown()
