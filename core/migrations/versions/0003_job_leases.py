"""job leases: the worker running a job, its lease expiry, a drain flag, when a message was last sent

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("release_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_jobs_lease_expires_at", ["lease_expires_at"])
    # Jobs already queued count as sent when they were created; the reaper re-sends them if no message is live.
    op.execute("UPDATE jobs SET enqueued_at = created_at WHERE enqueued_at IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_lease_expires_at")
        batch.drop_column("enqueued_at")
        batch.drop_column("release_requested")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
