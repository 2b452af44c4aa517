"""api key scopes: ``all`` (every route) or ``predict`` (the prediction routes only)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, as in 0006: the server default gives every existing key today's scope, ``all``.


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("scope", sa.String(16), nullable=False, server_default="all"))


def downgrade() -> None:
    op.drop_column("api_keys", "scope")
