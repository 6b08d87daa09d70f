"""Two `vary serve` replicas on one PostgreSQL (--database-url), each with its own data dir: a key created
once with `vary keys create --database-url` works on both, the usage rows of both land in the database,
both sign URLs with the one secret kept there, and a revoke is refused by both at the next request, with
OpenAI's 401 JSON (the key is looked up in the database on every request: no replica caches it)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.cluster import postgres
from tests.conftest import png_bytes
from vary.db import Database, SecretRow
from vary.testing import ServerProcess

pytestmark = pytest.mark.cluster
postgres_server = postgres.postgres_server  # the fixtures this module uses
postgres_url = postgres.postgres_url
WAIT_S = 120


def vary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vary", *args], capture_output=True, text=True, timeout=WAIT_S, env=os.environ.copy()
    )


@pytest.fixture()
def replicas(postgres_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    args = ["--database-url", postgres_url]
    first = ServerProcess(tmp_path / "replica-a", extra_args=args).start()
    try:
        second = ServerProcess(tmp_path / "replica-b", extra_args=args).start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def client(server: ServerProcess, key: str) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=WAIT_S)


def test_a_key_made_once_works_on_both_and_a_revoke_reaches_both(
    replicas: tuple[ServerProcess, ServerProcess], postgres_url: str, tmp_path: Path
) -> None:
    a, b = replicas
    created = vary("keys", "create", "--name", "shared", "--database-url", postgres_url, "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    key_id = key.split("-")[1]

    ids = ["a-1", "b-1", "a-2"]
    for server, request_id in zip((a, b, a), ids, strict=True):
        answer = client(server, key).images.create_variation(
            image=png_bytes(), size="256x256", response_format="b64_json", extra_headers={"x-request-id": request_id}
        )
        assert len(answer.data) == 1 and answer.data[0].b64_json

    db = Database(postgres_url)
    try:
        rows = db.usage_rows(key_id=key_id)
        assert sorted(r.request_id or "" for r in rows) == sorted(ids) and {r.status for r in rows} == {200}
        with db.session() as s:
            assert s.query(SecretRow).count() == 1  # one signing secret, made by whichever started first
    finally:
        db.close()
    assert not (a.data_dir / "secret").exists() and not (b.data_dir / "secret").exists()
    assert not (a.data_dir / "vary.db").exists() and not (b.data_dir / "vary.db").exists()

    # A URL signed by one replica passes the other's signature check: the image itself is in the first
    # replica's data dir (a shared store is VARY_STORAGE_URL's job), so the second answers "no such file".
    url = client(a, key).images.create_variation(image=png_bytes(), size="256x256", response_format="url")
    signed = url.data[0].url
    assert signed is not None and httpx.get(signed, timeout=WAIT_S).status_code == 200
    elsewhere = httpx.get(signed.replace(a.base_url, b.base_url), timeout=WAIT_S)
    assert elsewhere.status_code == 404 and elsewhere.json()["error"]["code"] == "file_not_found"
    forged = httpx.get(signed.replace("signature=", "signature=0"), timeout=WAIT_S)
    assert forged.status_code == 403

    revoked = vary("keys", "revoke", key_id, "--database-url", postgres_url, "--data-dir", str(tmp_path))
    assert revoked.returncode == 0, revoked.stderr
    for server in (a, b):
        with pytest.raises(openai.AuthenticationError) as refused:
            client(server, key).images.create_variation(image=png_bytes(), size="256x256")
        assert refused.value.status_code == 401
        assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "invalid_api_key"
        raw = httpx.post(
            f"{server.base_url}/v1/images/variations",
            headers={"Authorization": f"Bearer {key}"},
            files={"image": ("a.png", png_bytes())},
            timeout=WAIT_S,
        )
        assert raw.status_code == 401 and set(raw.json()["error"]) == {"message", "type", "param", "code"}
