"""tenant quotas: per-tenant overrides of the concurrent-jobs and stored-bytes quotas

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# Plain ALTER TABLE (SQLite >= 3.35 drops columns too): a batch copy of ``tenants`` would drop the old table,
# and with foreign keys on, SQLite's implicit delete would cascade to every row that belongs to a tenant.


def upgrade() -> None:
    op.add_column("tenants", sa.Column("max_running_jobs", sa.Integer(), nullable=True))
    op.add_column("tenants", sa.Column("max_stored_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("tenants", "max_stored_bytes")
    op.drop_column("tenants", "max_running_jobs")
