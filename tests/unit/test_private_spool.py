"""The usage spool holds key ids and end users: 0600 whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vary.state.usage_spool import UsageSpool


def test_the_usage_spool_file_is_the_owner_s_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        spool = UsageSpool(tmp_path / "usage-spool.jsonl", max_rows=10)
        spool.add({"key_id": "k", "user": "someone", "n": 1, "status": 200, "created_at": 1.0})
        assert stat.S_IMODE((tmp_path / "usage-spool.jsonl").stat().st_mode) == 0o600
        spool.add({"key_id": "k", "user": "other", "n": 1, "status": 200, "created_at": 2.0})
        spool.written(1)  # rewritten through a temporary file
        assert stat.S_IMODE((tmp_path / "usage-spool.jsonl").stat().st_mode) == 0o600
    finally:
        os.umask(old)
