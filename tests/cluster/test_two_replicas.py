"""Two plain `vary serve` replicas, each with its own data dir, sharing one PostgreSQL database and one S3
bucket (a real SeaweedFS): what one box held is now shared, so either replica can answer anything.

A key made once with `vary keys create` works on both; the usage rows of both land in the database; both
sign URLs with the one secret made by the first to start and kept in the database, so a URL from one is
served by the other, from the bucket; a revoke is refused by both at the next request (OpenAI's 401 JSON:
no replica caches keys); and after `kill -9` of one, the other goes on serving, old URLs included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from openai import OpenAI

from tests.harness import decode_png, png_bytes, serve
from vary.state.database import Database
from vary.state.schema import SecretRow
from vary.testing import ServerProcess

if TYPE_CHECKING:
    from tests.cluster.seaweedfs import S3Endpoint

pytestmark = pytest.mark.cluster
WAIT_S = 120
PREFIX = "shared/images"


@pytest.fixture()
def shared_env(postgres_url: str, seaweedfs: S3Endpoint, s3_bucket: str) -> dict[str, str]:
    """What every replica and every command of the deployment is given: the database, the bucket."""
    return {
        **seaweedfs.env(),
        "VARY_DATABASE_URL": postgres_url,
        "VARY_STORAGE_URL": f"s3://{s3_bucket}/{PREFIX}",
    }


@pytest.fixture()
def replicas(shared_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # Each its own data dir, the database and the bucket shared; no key until the test makes one there.
    with (
        serve(tmp_path / "replica-a", env=shared_env, key=False) as a,
        serve(tmp_path / "replica-b", env=shared_env, key=False) as b,
    ):
        yield a.server, b.server


def vary(env: dict[str, str], tmp_path: Path, *args: str) -> str:
    """A `vary` command on the operator's machine (its own data dir): its stdout; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "vary", *args, "--data-dir", str(tmp_path / "operator")],
        capture_output=True, text=True, timeout=WAIT_S, env={**os.environ, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_key(env: dict[str, str], tmp_path: Path, name: str) -> str:
    return vary(env, tmp_path, "keys", "create", "--name", name).strip().splitlines()[-1]


def client(server: ServerProcess, key: str) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=WAIT_S)


def object_key(url: str) -> str:
    return f"{PREFIX}/{urlsplit(url).path.rsplit('/', 1)[1]}"


def bucket_keys(seaweedfs: S3Endpoint, bucket: str) -> set[str]:
    pages = seaweedfs.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {entry["Key"] for page in pages for entry in page.get("Contents", [])}


def test_two_replicas_share_keys_usage_secret_and_images(
    replicas: tuple[ServerProcess, ServerProcess],
    shared_env: dict[str, str],
    postgres_url: str,
    seaweedfs: S3Endpoint,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    a, b = replicas
    key = new_key(shared_env, tmp_path, "shared")
    key_id = key.split("-")[1]

    # Either replica answers with the key made once; each request's usage row is in the one database.
    urls: list[str] = []
    for server, request_id in ((a, "a-1"), (b, "b-1"), (a, "a-2"), (b, "b-2")):
        answer = client(server, key).images.create_variation(
            image=png_bytes(), n=2, size="256x256", response_format="url", extra_headers={"x-request-id": request_id}
        )
        urls += [image.url for image in answer.data if image.url]
    assert len(urls) == 8
    database = Database.open(postgres_url)
    try:
        rows = database.usage_rows(key_id=key_id)
        assert sorted(r.request_id or "" for r in rows) == ["a-1", "a-2", "b-1", "b-2"]
        assert {r.status for r in rows} == {200} and {r.n for r in rows} == {2}
        with database.session() as s:
            assert s.query(SecretRow).count() == 1, "one signing secret, made by whichever replica started first"
    finally:
        database.close()

    # The images are objects in the bucket, not files on either replica; each replica serves the URLs of both.
    assert bucket_keys(seaweedfs, s3_bucket) == {object_key(url) for url in urls}
    for server in (a, b):
        assert not any((server.data_dir / name).exists() for name in ("images", "secret", "vary.db"))
    for url in urls:
        stored = seaweedfs.client().get_object(Bucket=s3_bucket, Key=object_key(url))["Body"].read()
        for server in (a, b):
            fetched = httpx.get(f"{server.base_url}{urlsplit(url).path}?{urlsplit(url).query}", timeout=WAIT_S)
            assert fetched.status_code == 200 and fetched.content == stored
            assert decode_png(fetched.content).size == (256, 256)
    forged = httpx.get(urls[0].replace("signature=", "signature=0"), timeout=WAIT_S)
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "invalid_signature"

    # A revoke, made on the operator's machine, is refused by both replicas from the next request on.
    vary(shared_env, tmp_path, "keys", "revoke", key_id)
    for server in (a, b):
        with pytest.raises(openai.AuthenticationError) as refused:
            client(server, key).images.create_variation(image=png_bytes(), size="256x256")
        assert refused.value.status_code == 401
        assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "invalid_api_key"

    # kill -9 of one replica: the other goes on serving new requests and the URLs the dead one signed.
    other_key = new_key(shared_env, tmp_path, "after-the-kill")
    a.stop(signal.SIGKILL)
    assert a.process is not None and a.process.returncode == -signal.SIGKILL
    answer = client(b, other_key).images.create_variation(image=png_bytes(), size="256x256", response_format="url")
    assert answer.data[0].url and httpx.get(answer.data[0].url, timeout=WAIT_S).status_code == 200
    from_the_dead = urls[0].replace(a.base_url, b.base_url)
    assert httpx.get(from_the_dead, timeout=WAIT_S).status_code == 200
