from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from vary.errors import StoreUnavailable
from vary.service.runtime import sweep_forever
from vary.settings import Settings
from vary.state.image_store import StorageSetupError
from vary.state.local_store import LocalImageStore
from vary.state.stores import parse_storage_url


def test_put_get_delete(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path / "images")
    image_id = store.put(b"png bytes")
    assert store.is_valid_id(image_id)
    assert store.read(image_id) == b"png bytes"
    assert sorted(p.name for p in store.root.iterdir()) == [f"{image_id}.png"], "no temp file is left behind"
    store.delete(image_id)
    assert store.read(image_id) is None


@pytest.mark.parametrize(
    "bad", ["../secret", "..", "a/b", "x" * 15, "x" * 65, "abc def ghijklmnop", "%2e%2e%2fsecretxxxx"]
)
def test_ids_that_are_not_ours_never_touch_the_disk(tmp_path: Path, bad: str) -> None:
    store = LocalImageStore(tmp_path)
    assert not store.is_valid_id(bad)
    assert store.read(bad) is None
    with pytest.raises(KeyError):
        store.path_for(bad)
    with pytest.raises(KeyError):
        store.delete(bad)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalImageStore(tmp_path)

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StoreUnavailable):
        store.put(b"data")
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_expired_files_and_stale_temp_files(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    old, fresh = store.put(b"old"), store.put(b"fresh")
    stale_temp = tmp_path / ".tmp-crashed"
    stale_temp.write_bytes(b"partial")
    now = 1_000_000.0
    os.utime(store.path_for(old), (now - 3601, now - 3601))
    os.utime(store.path_for(fresh), (now - 3599, now - 3599))
    os.utime(stale_temp, (now - 601, now - 601))
    assert store.sweep(ttl_seconds=3600, now=now) == 2
    assert store.read(old) is None and store.read(fresh) == b"fresh" and not stale_temp.exists()


def test_storage_urls(tmp_path: Path) -> None:
    default = parse_storage_url(None, tmp_path / "images")
    assert (default.scheme, default.directory) == ("file", tmp_path / "images")
    assert parse_storage_url("file:///srv/vary%20images", tmp_path).directory == Path("/srv/vary images")
    s3 = parse_storage_url("s3://my-bucket/a/b/", tmp_path)
    assert (s3.scheme, s3.bucket, s3.prefix) == ("s3", "my-bucket", "a/b/")
    assert parse_storage_url("s3://my-bucket", tmp_path).prefix == ""


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/dir",
        "file://relative/dir",
        "images",
        "s3://",
        "s3://Bad_Bucket",
        "s3://b",
        "s3://bucket/x?y=1",
        "gs://bucket",
        "s3://user:hunter2@bucket",
    ],
)
def test_other_storage_urls_are_refused_naming_the_accepted_forms(tmp_path: Path, url: str) -> None:
    with pytest.raises(StorageSetupError, match=r"file:///absolute/dir or s3://BUCKET\[/PREFIX\]") as refused:
        parse_storage_url(url, tmp_path)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("may", [False, True])
def test_the_sweeper_sweeps_only_in_the_rounds_it_may(tmp_path: Path, may: bool) -> None:
    """The may_sweep hook: one replica at a time sweeps (e.g. the holder of a lease in the shared database)."""
    store = LocalImageStore(tmp_path / "images")
    expired = store.put(b"old")
    os.utime(store.path_for(expired), (0, 0))
    asked: list[bool] = []

    def may_sweep() -> bool:
        asked.append(may)
        return may

    async def rounds() -> None:
        settings = Settings(data_dir=tmp_path, sweep_interval_seconds=0.01)
        sweeper = asyncio.create_task(sweep_forever(store, settings, may_sweep=may_sweep))
        deadline = time.monotonic() + 30
        while len(asked) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # poll interval, bounded by the deadline
        sweeper.cancel()

    asyncio.run(rounds())
    assert len(asked) >= 3
    assert (store.read(expired) is None) is may
