from __future__ import annotations

import os
from pathlib import Path

import pytest

from vary.storage import ImageStore


def test_put_get_delete(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    image_id = store.put(b"png bytes")
    assert store.is_valid_id(image_id)
    path = store.get(image_id)
    assert path is not None and path.read_bytes() == b"png bytes"
    assert sorted(p.name for p in store.root.iterdir()) == [f"{image_id}.png"], "no temp file is left behind"
    store.delete(image_id)
    assert store.get(image_id) is None


@pytest.mark.parametrize(
    "bad", ["../secret", "..", "a/b", "x" * 15, "x" * 65, "abc def ghijklmnop", "%2e%2e%2fsecretxxxx"]
)
def test_ids_that_are_not_ours_never_touch_the_disk(tmp_path: Path, bad: str) -> None:
    store = ImageStore(tmp_path)
    assert not store.is_valid_id(bad)
    assert store.get(bad) is None
    with pytest.raises(KeyError):
        store.path_for(bad)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ImageStore(tmp_path)

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        store.put(b"data")
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_expired_files_and_stale_temp_files(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    old, fresh = store.put(b"old"), store.put(b"fresh")
    stale_temp = tmp_path / ".tmp-crashed"
    stale_temp.write_bytes(b"partial")
    now = 1_000_000.0
    os.utime(store.path_for(old), (now - 3601, now - 3601))
    os.utime(store.path_for(fresh), (now - 3599, now - 3599))
    os.utime(stale_temp, (now - 601, now - 601))
    assert store.sweep(ttl_seconds=3600, now=now) == 2
    assert store.get(old) is None and store.get(fresh) is not None and not stale_temp.exists()
