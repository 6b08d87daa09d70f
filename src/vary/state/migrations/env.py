"""Alembic's environment for vary: the connection is the one `vary.state.migrations.upgrade` opened and locked."""

from __future__ import annotations

from alembic import context

from vary.state.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("vary's migrations run through vary.state.migrations.upgrade: use `vary db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters a table by copying it: a later revision that changes a column needs batch mode there.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():  # inside the caller's transaction: Alembic begins none of its own
    context.run_migrations()
