"""The content policy: what the checks found on each request, and keys whose checks are off.

Revision ID: 0003_safety_policy
Revises: 0002_secrets_and_leases
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_safety_policy"
down_revision = "0002_secrets_and_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs (SQLite and PostgreSQL alike), nullable: no copy of a large usage table.
    op.add_column("usage", sa.Column("policy", sa.String(1000), nullable=True))
    op.add_column("api_keys", sa.Column("safety", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("safety")
    with op.batch_alter_table("usage") as table:
        table.drop_column("policy")
