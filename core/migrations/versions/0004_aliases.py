"""aliases: stable per-tenant names for models

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name"),
    )
    op.create_index("ix_aliases_model_id", "aliases", ["model_id"])
    op.create_index("ix_aliases_tenant_id", "aliases", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_aliases_tenant_id", table_name="aliases")
    op.drop_index("ix_aliases_model_id", table_name="aliases")
    op.drop_table("aliases")
