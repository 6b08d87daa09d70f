"""Usage: one row per variation request, and what a key's quota counts.

The server gives the database a usage spool (`usage_spool.py`): a row that cannot be written at once
is spooled, and one writer thread (started by the server, never by opening the database) writes the
spool to the database when it takes writes again. Commands (`vary keys`, `vary usage`) do not spool.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from sqlalchemy import ColumnElement, Select, String, and_, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from vary.state.connection import Sessions, answering
from vary.state.schema import UsageRow
from vary.state.usage_spool import UsageSpool, Values

log = logging.getLogger("vary.usage")
tracer = trace.get_tracer(__name__)
# How often the writer thread tries the database again while rows are spooled.
SPOOL_RETRY_SECONDS = 1.0


_USAGE_COLUMNS = tuple(column.name for column in UsageRow.__table__.columns if column.name != "id")


_TEXT_LENGTHS = {
    column.name: column.type.length
    for column in UsageRow.__table__.columns
    if isinstance(column.type, String) and column.type.length
}


def _storable(values: Values) -> Values:
    """Values every database takes. PostgreSQL refuses a NUL in text and text longer than its column (SQLite
    takes both): one refused row, a client's `user` say, would hold every spooled row behind it for good."""
    cleaned = dict(values)
    for name, length in _TEXT_LENGTHS.items():
        value = cleaned.get(name)
        if isinstance(value, str):
            cleaned[name] = value.replace("\x00", "\ufffd")[:length]
    return cleaned


def _values(row: UsageRow) -> Values:
    return _storable({name: getattr(row, name) for name in _USAGE_COLUMNS})


class Usage(Sessions):
    spool: UsageSpool | None = None
    _writer: threading.Thread | None = None
    _stop: threading.Event

    def record_usage(self, row: UsageRow) -> None:
        """Writes the row, or spools it when the database cannot take it at once (with a spool)."""
        with tracer.start_as_current_span("vary.db.record_usage", attributes=self._span_attributes()) as span:
            spooled = self._record_usage(_values(row))
            span.set_attribute("vary.usage.spooled", spooled)

    def _span_attributes(self) -> dict[str, str]:
        bind = self._sessions.kw.get("bind")
        system = bind.dialect.name if bind is not None else "unknown"
        return {"db.system.name": system, "db.operation.name": "INSERT", "db.collection.name": "usage"}

    def _record_usage(self, values: Values) -> bool:
        """Whether the row was spooled rather than written."""
        if self.spool is None:
            with self.session() as s:
                s.add(UsageRow(**values))
            return False
        if len(self.spool):  # the database was failing a moment ago: do not wait on it again
            self.spool.add(values)
            return True
        try:
            with self.session() as s:
                s.add(UsageRow(**values))
        except SQLAlchemyError as exc:
            log.warning(
                "usage row spooled: the database cannot take it now (%s)",
                type(getattr(exc, "orig", None) or exc).__name__,
            )
            self.spool.add(values)
            return True
        return False

    def write_spool(self) -> int:
        """Writes the spooled rows to the database in one transaction; how many were written (0 on failure)."""
        if self.spool is None:
            return 0
        rows = self.spool.rows()
        if not rows:
            return 0
        try:
            with self.session() as s:
                for values in rows:
                    # A row may already be there if the spool file could not be emptied after a write.
                    present = s.scalar(
                        select(func.count())
                        .select_from(UsageRow)
                        .where(
                            UsageRow.created_at == values.get("created_at"),
                            UsageRow.request_id == values.get("request_id"),
                        )
                    )
                    if not present:
                        s.add(UsageRow(**_storable({k: v for k, v in values.items() if k in _USAGE_COLUMNS})))
        except SQLAlchemyError:
            return 0
        self.spool.written(len(rows))
        log.info("wrote %d spooled usage rows to the database", len(rows))
        return len(rows)

    def start_spool_writer(self) -> None:
        """One thread that writes spooled rows whenever the database takes writes again (the server's)."""
        if self.spool is None or self._writer is not None:
            return
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_spool_forever, name="vary-usage-spool", daemon=True)
        self._writer.start()

    def stop_spool_writer(self) -> None:
        if self._writer is not None:
            self._stop.set()
            self._writer.join()
            self._writer = None

    def _write_spool_forever(self) -> None:
        while not self._stop.wait(SPOOL_RETRY_SECONDS):
            try:
                self.write_spool()
            except Exception:  # noqa: BLE001 - the writer thread must outlive any one failure
                log.exception("writing spooled usage rows failed")

    def usage_rows(
        self, *, key_id: str | None = None, user: str | None = None, since: float | None = None
    ) -> list[UsageRow]:
        query = _usage_filter(select(UsageRow).order_by(UsageRow.id), key_id, user, since)
        with answering("read usage"), self.session() as s:
            return list(s.scalars(query))

    def usage_groups(
        self,
        *,
        key_id: str | None = None,
        user: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[UsageGroup]:
        """The usage by key, user and model, summed up by the database (the rows never leave it), ordered
        by key, user and model; `limit` groups from `offset` on. Blocking: call it off the event loop."""
        query = _grouped(_usage_filter(select(UsageRow), key_id, user, since)).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with answering("read usage"), self.session() as s:
            return [UsageGroup(*row) for row in s.execute(query)]

    def images_made(self, key_id: str, since: float) -> int:
        """Images made for a key since `since`, what its quota counts: those it received, and those made and never
        given (outputs flagged and made again or refused, a provider's partly made answer given up on)."""
        received = case((UsageRow.status == 200, func.coalesce(UsageRow.n, 0)), else_=0)
        query = select(func.coalesce(func.sum(received + func.coalesce(UsageRow.unused_images, 0)), 0)).where(
            UsageRow.key_id == key_id, UsageRow.created_at >= since
        )
        with answering("count a quota"), self.session() as s:
            made = int(s.scalar(query) or 0)
        # Rows spooled and not yet written count too; one being written may count twice for a moment.
        return made + (self.spool.images(key_id, since) if self.spool is not None else 0)


@dataclass(frozen=True)
class UsageGroup:
    """One key, user and model's usage, as the database summed it up (ops/usage_report.py shows it)."""

    key_id: str | None
    user: str | None
    model: str | None
    requests: int
    images: int
    failures: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_mean_ms: float


def _usage_filter(query: Select[Any], key_id: str | None, user: str | None, since: float | None) -> Select[Any]:
    # Compared as stored (_storable): PostgreSQL would refuse a NUL in the parameter as well.
    if key_id is not None:
        query = query.where(UsageRow.key_id == key_id.replace("\x00", "\ufffd"))
    if user is not None:
        query = query.where(UsageRow.user == user.replace("\x00", "\ufffd"))
    if since is not None:
        query = query.where(UsageRow.created_at >= since)
    return query


def _grouped(rows: Select[Any]) -> Select[Any]:
    """Per group: counts, sums, the mean, and the nearest-rank p50 and p95 latencies (window functions, which
    SQLite and PostgreSQL both have): the rank-th fastest row where rank = ceil(q * rows), at least 1."""
    group = (UsageRow.key_id, UsageRow.user, UsageRow.model)
    ranked = (
        rows.with_only_columns(
            *group,
            UsageRow.n,
            UsageRow.status,
            UsageRow.latency_ms,
            func.row_number().over(partition_by=group, order_by=UsageRow.latency_ms).label("rank"),
            func.count().over(partition_by=group).label("size"),
        )
        .order_by(None)
        .subquery()
    )
    c = ranked.c

    def nearest_rank(percent: int) -> ColumnElement[float]:
        # rank >= q * size > rank - 1, in whole numbers: no CEIL (SQLite may lack it).
        at_rank = and_(c.rank * 100 >= percent * c.size, (c.rank - 1) * 100 < percent * c.size)
        return func.max(case((at_rank, c.latency_ms)))

    keys = (c.key_id, c.user, c.model)
    return (
        select(
            *keys,
            func.count(),
            func.coalesce(func.sum(case((c.status == 200, func.coalesce(c.n, 0)), else_=0)), 0),
            func.coalesce(func.sum(case((c.status != 200, 1), else_=0)), 0),
            nearest_rank(50),
            nearest_rank(95),
            func.avg(c.latency_ms),
        )
        .group_by(*keys)
        .order_by(*(func.coalesce(key, "") for key in keys))
    )
