"""The data dir is its owner's only: the directory 0700, the database (and its WAL), the images, the secret
and the first key 0600, whatever the umask; a data dir an older vary made 0755 is narrowed. And the first key
is printed only to a terminal: a log collector that keeps stdout never sees it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.harness import Running, create_key, serve


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_url_image(vary: Running, key: str) -> None:
    response = vary.post_variation(key, response_format="url")
    assert response.status_code == 200, response.text


def test_a_new_data_dir_and_everything_in_it_is_the_owner_s_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with serve(tmp_path, key=False) as vary:  # no key yet: the start makes the first one
        key = (data_dir / "first-api-key").read_text().strip()
        make_url_image(vary, key)
        assert mode(data_dir) == 0o700
        assert mode(data_dir / "images") == 0o700
        images = list((data_dir / "images").glob("*.png"))
        assert images and all(mode(image) == 0o600 for image in images)
        for name in ("vary.db", "vary.db-wal", "vary.db-shm", "secret", "first-api-key"):
            assert mode(data_dir / name) == 0o600, name
        log = vary.server.log()
    assert key not in log, "stdout is a file here, not a terminal: the key stays in its 0600 file"
    assert "first-api-key" in log


def test_a_data_dir_an_older_vary_left_open_is_narrowed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _, key = create_key(data_dir)
    (data_dir / "images").mkdir()
    for path, wide in ((data_dir, 0o755), (data_dir / "images", 0o755), (data_dir / "vary.db", 0o644)):
        os.chmod(path, wide)
    with serve(tmp_path, key=False) as vary:
        make_url_image(vary, key)
        assert mode(data_dir) == 0o700
        assert mode(data_dir / "vary.db") == 0o600 and mode(data_dir / "vary.db-wal") == 0o600
        assert all(mode(image) == 0o600 for image in (data_dir / "images").glob("*.png"))
