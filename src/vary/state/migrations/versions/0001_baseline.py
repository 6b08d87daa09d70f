"""Baseline: the schema of vary before Alembic (api_keys, usage, write_probe).

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-23

Conditional DDL, on purpose: databases made by earlier vary versions have no alembic_version table, and
may already hold these tables, some without the columns added over time (`admin` and the four limits on
api_keys; `request_id`, `target`, `attempts`, `targets_tried` on usage; no `write_probe` at all). So the
baseline looks at what is there and creates only what is absent: a table, a column, an index. This is
the one revision that may do so: every later one starts from this known schema and says exactly what it
changes. Every column it adds is nullable or has a server default, so existing rows stay valid.

The columns are written out here, not taken from vary.db's models: a revision is what the schema was
when it was written, and the models move on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def _api_keys() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("admin", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("images_per_minute", sa.Integer(), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("image_quota", sa.Integer(), nullable=True),
    ]


def _usage() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=True),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("n", sa.Integer(), nullable=True),
        sa.Column("size", sa.String(16), nullable=True),
        sa.Column("response_format", sa.String(16), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=True),
        sa.Column("targets_tried", sa.String(1000), nullable=True),
    ]


def _write_probe() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("written_at", sa.Float(), nullable=False),
    ]


TABLES = {"api_keys": _api_keys, "usage": _usage, "write_probe": _write_probe}
INDEXES = {"ix_usage_created_at": ("usage", ["created_at"]), "ix_usage_key_id": ("usage", ["key_id"])}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present_tables = set(inspector.get_table_names())
    for table, columns in TABLES.items():
        if table not in present_tables:
            op.create_table(table, *columns())
            continue
        present = {column["name"] for column in inspector.get_columns(table)}
        for column in columns():
            if column.name not in present:  # an older vary's table: the columns added since
                op.add_column(table, column)
    for index, (table, index_columns) in INDEXES.items():
        if index not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}:
            op.create_index(index, table, index_columns)


def downgrade() -> None:
    raise NotImplementedError("the baseline is where vary's schema starts: there is nothing to go back to")
