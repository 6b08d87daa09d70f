"""The S3 image store against a real SeaweedFS: objects, sweeping, readiness, start checks, a dead store."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from vary.errors import StoreUnavailable
from vary.settings import Settings
from vary.state.image_store import StorageSetupError, new_id
from vary.state.s3_store import S3ImageStore
from vary.state.stores import open_store

if TYPE_CHECKING:
    from tests.cluster.seaweedfs import S3Endpoint

pytestmark = pytest.mark.cluster
WAIT_S = 60.0  # a bound for "never hangs", not a timing assertion
HOSTILE = ["../secret", "..", "a/b", "x" * 15, "x" * 65, "abc def ghijklmnop", "%2e%2e%2fsecretxxxx", ""]


def keys(endpoint: S3Endpoint, bucket: str) -> set[str]:
    pages = endpoint.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {entry["Key"] for page in pages for entry in page.get("Contents", [])}


def test_put_read_delete(s3_env: S3Endpoint, s3_bucket: str) -> None:
    store = S3ImageStore(s3_bucket, "images/")
    image_id = store.put(b"png bytes")
    assert store.is_valid_id(image_id)
    assert keys(s3_env, s3_bucket) == {f"images/{image_id}.png"}
    head = s3_env.client().head_object(Bucket=s3_bucket, Key=f"images/{image_id}.png")
    assert head["ContentType"] == "image/png"
    assert store.read(image_id) == b"png bytes"
    assert store.read(new_id()) is None  # never made: not an error
    store.delete(image_id)
    assert store.read(image_id) is None
    assert keys(s3_env, s3_bucket) == set()


def test_presigned_urls_fetch_the_object_without_vary(s3_env: S3Endpoint, s3_bucket: str) -> None:
    store = S3ImageStore(s3_bucket, "p/")
    image_id = store.put(b"png bytes")
    url = store.presigned_url(image_id, expires_in=60)
    assert url.startswith(f"{s3_env.url}/{s3_bucket}/p/{image_id}.png?") and "X-Amz-Expires=60" in url
    assert httpx.get(url, timeout=WAIT_S).content == b"png bytes"
    tampered = url.replace(image_id, new_id())
    assert httpx.get(tampered, timeout=WAIT_S).status_code == 403


@pytest.fixture()
def dead_endpoint(s3_env: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An endpoint nobody listens on: every call is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", url)
    yield url


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_ids_never_reach_the_store(dead_endpoint: str, bad: str) -> None:
    # The store's endpoint is dead: any call that reached it would raise StoreUnavailable.
    store = S3ImageStore("some-bucket", "p/", max_attempts=1)
    assert not store.is_valid_id(bad)
    assert store.read(bad) is None
    with pytest.raises(KeyError):
        store.delete(bad)
    with pytest.raises(KeyError):
        store.presigned_url(bad, expires_in=60)


def test_sweep_deletes_expired_images_of_ours_and_stale_probes_only(s3_env: S3Endpoint, s3_bucket: str) -> None:
    store = S3ImageStore(s3_bucket, "images/")
    client = s3_env.client()
    first = store.put(b"png")
    # Past one page of listing and one DeleteObjects batch (1000 keys each).
    ids = [first] + [new_id() for _ in range(1004)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=s3_bucket, Key=f"images/{i}.png", Body=b"png"), ids[1:]))
    foreign = {"images/notes.txt", f"images/sub/{new_id()}.png", f"other/{new_id()}.png", "images/x.png"}
    for key in foreign:
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"not vary's")
    client.put_object(Bucket=s3_bucket, Key="images/.ready-0badc0de", Body=b"ok")  # a probe a crash left
    stamps = [
        entry["LastModified"].timestamp()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for entry in page.get("Contents", [])
    ]

    # Every image still within its lifetime: kept; the probe, older than ten minutes by then, goes.
    assert store.sweep(ttl_seconds=3600, now=min(stamps) + 3599) == 1
    assert keys(s3_env, s3_bucket) == {f"images/{i}.png" for i in ids} | foreign
    # Past the lifetime: every image of ours goes, nothing else.
    assert store.sweep(ttl_seconds=3600, now=max(stamps) + 3601) == len(ids)
    assert keys(s3_env, s3_bucket) == foreign
    assert store.read(first) is None


def test_check_writable_leaves_nothing(s3_env: S3Endpoint, s3_bucket: str) -> None:
    S3ImageStore(s3_bucket, "images/").check_writable()
    assert keys(s3_env, s3_bucket) == set()


def test_a_bucket_deleted_under_the_store_is_a_store_error(s3_env: S3Endpoint) -> None:
    client = s3_env.client()
    client.create_bucket(Bucket="vary-short-lived")
    store = S3ImageStore("vary-short-lived", "images/")
    client.delete_bucket(Bucket="vary-short-lived")
    with pytest.raises(StoreUnavailable):
        store.check_writable()
    with pytest.raises(StoreUnavailable):
        store.put(b"png")


def settings(tmp_path: Path, url: str, **more: object) -> Settings:
    return Settings(data_dir=tmp_path, storage_url=url, **more)  # type: ignore[arg-type]


def test_open_store_checks_the_bucket(s3_env: S3Endpoint, s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(settings(tmp_path, f"s3://{s3_bucket}/a/b"))
    assert isinstance(store, S3ImageStore) and (store.bucket, store.prefix) == (s3_bucket, "a/b/")
    with pytest.raises(StorageSetupError, match=r"^the bucket s3://vary-missing-bucket at http://127\.0\.0\.1:\d+ "):
        open_store(settings(tmp_path, "s3://vary-missing-bucket/images"))
    assert "vary-missing-bucket" not in {b["Name"] for b in s3_env.client().list_buckets()["Buckets"]}


def test_bad_credentials_are_refused_at_start(
    s3_env: S3Endpoint, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageSetupError, match="denied") as refused:
        open_store(settings(tmp_path, f"s3://{s3_bucket}"))
    assert "not-the-secret" not in str(refused.value)


def test_a_dead_endpoint_is_refused_at_start(dead_endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(StorageSetupError, match="cannot be reached"):
        open_store(settings(tmp_path, "s3://any-bucket"))


def test_presign_needs_an_s3_store(tmp_path: Path) -> None:
    with pytest.raises(StorageSetupError, match="VARY_STORAGE_PRESIGN=1 needs an s3:// storage URL"):
        open_store(settings(tmp_path, f"file://{tmp_path}/images", storage_presign=True))


def finishes(call: Callable[[], object]) -> BaseException | None:
    """What `call` raised, run in a thread that must finish within WAIT_S (it must never hang)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT_S)
    assert not thread.is_alive(), "the store call hung"
    return outcome[0]


def test_a_refusing_endpoint_is_a_store_error(dead_endpoint: str) -> None:
    store = S3ImageStore("some-bucket", "images/", max_attempts=2)
    for call in (lambda: store.put(b"png"), lambda: store.read(new_id()), store.check_writable):
        assert isinstance(finishes(call), StoreUnavailable)
    assert isinstance(finishes(lambda: store.sweep(ttl_seconds=1)), StoreUnavailable)


def test_an_endpoint_that_never_answers_is_a_store_error_not_a_hang(
    s3_env: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{silent.getsockname()[1]}")
        store = S3ImageStore("some-bucket", "images/", connect_timeout=1, read_timeout=1, max_attempts=2)
        assert isinstance(finishes(lambda: store.put(b"png")), StoreUnavailable)
        assert isinstance(finishes(lambda: store.read(new_id())), StoreUnavailable)


def test_an_object_too_large_to_be_ours_is_never_read(s3_env: S3Endpoint, s3_bucket: str) -> None:
    """Another writer in the bucket put a large object under a valid-looking id: it is not read into memory."""
    store = S3ImageStore(s3_bucket, "big/", max_read_bytes=1000)
    image_id = new_id()
    s3_env.client().put_object(Bucket=s3_bucket, Key=f"big/{image_id}.png", Body=b"x" * 1001)
    assert store.read(image_id) is None
    assert store.read(store.put(b"y" * 1000)) == b"y" * 1000
