"""compose.yaml's one-shot that makes the bucket, run as Compose resolves it, against a real SeaweedFS S3
gateway: it makes the bucket, and a second run (a `compose up` again) finds it and succeeds too."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cluster.seaweedfs import S3Endpoint
from tests.deploy.tools import compose_config

pytestmark = pytest.mark.cluster


def test_the_bucket_one_shot_makes_the_bucket_and_is_idempotent(seaweedfs: S3Endpoint) -> None:
    service = compose_config("compose.yaml")["services"]["create-bucket"]
    assert service["entrypoint"] == ["python3", "-c"]
    (script,) = service["command"]
    bucket = "vary-images"
    # The store of the test in place of the compose network's `seaweedfs`, with its credentials.
    env = {**os.environ, **seaweedfs.env()}
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
    assert bucket in [b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]]
