"""Usage rows count the images a provider made and billed that the client never got.

Revision ID: 0004_usage_unused_images
Revises: 0003_safety_policy
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_usage_unused_images"
down_revision = "0003_safety_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite and PostgreSQL alike): no copy of a large usage table.
    op.add_column("usage", sa.Column("unused_images", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage") as table:
        table.drop_column("unused_images")
