"""Usage rows the database could not take at once, kept until it can.

A row that cannot be written (the database locked by another writer past the short busy timeout, or the
disk full) is appended to a JSON-lines file in the data dir and kept in memory; a single writer thread
(`db.Database`) writes the rows to the database when it takes writes again, then empties the file. The
file makes the rows survive a restart; when even it cannot be written (a full disk), the rows are kept in
memory only, and lost if the process dies before the disk has room. At most `max_rows` rows are kept:
past that, rows are dropped and each drop is logged as an error.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from vary.datadir import private_opener

log = logging.getLogger("vary.usage")

Values = dict[str, Any]


class UsageSpool:
    def __init__(self, path: Path, *, max_rows: int) -> None:
        self.path = path
        self.max_rows = max_rows
        self.dropped = 0
        self._lock = threading.Lock()
        self._rows: list[Values] = self._load()
        self._on_disk = len(self._rows)  # how many of the rows (from the first) the file holds

    def _load(self) -> list[Values]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:
                log.error("skipped an unreadable line in %s (a write cut short)", self.path.name)
        return rows

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, values: Values) -> None:
        with self._lock:
            if len(self._rows) >= self.max_rows:
                self.dropped += 1
                log.error("usage spool full (%d rows): a usage row was dropped", self.max_rows)
                return
            self._rows.append(values)
            try:
                if self._on_disk == len(self._rows) - 1:  # the file holds every earlier row: append this one
                    with open(self.path, "a", opener=private_opener) as spool:
                        spool.write(json.dumps(values) + "\n")
                        spool.flush()
                        os.fsync(spool.fileno())
                else:  # earlier rows could not be written: write them all again
                    self._rewrite()
                self._on_disk = len(self._rows)
            except OSError as exc:
                log.warning("usage row kept in memory only: the spool file cannot be written (%s)", exc)

    def _rewrite(self) -> None:
        if not self._rows:
            self.path.unlink(missing_ok=True)
            return
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w", opener=private_opener) as spool:
            spool.write("".join(json.dumps(row) + "\n" for row in self._rows))
            spool.flush()
            os.fsync(spool.fileno())
        os.replace(temporary, self.path)

    def rows(self) -> list[Values]:
        with self._lock:
            return list(self._rows)

    def images(self, key_id: str, since: float) -> int:
        """The images made for a key since `since` (received, or made and never given), in the rows waiting
        here: the quota counts them too."""
        with self._lock:
            return sum(
                ((row.get("n") or 0) if row.get("status") == 200 else 0) + (row.get("unused_images") or 0)
                for row in self._rows
                if row.get("key_id") == key_id and row.get("created_at", 0) >= since
            )

    def written(self, count: int) -> None:
        """The first `count` rows are in the database now; the file keeps only the others."""
        with self._lock:
            del self._rows[:count]
            self._on_disk = max(0, self._on_disk - count)
            try:
                self._rewrite()
                self._on_disk = len(self._rows)
            except OSError as exc:
                # The file still has rows now written: they are recognised and skipped when read back.
                log.warning("could not rewrite the usage spool (%s)", exc)
