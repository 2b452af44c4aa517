"""feature sets per dataset version: a row per (version, cache key); the stored chunks stay shared by key

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# 0002 left the (tenant_id, cache_key) constraint unnamed: PostgreSQL named it, SQLite did not.
_OLD_PG_NAME = "feature_sets_tenant_id_cache_key_key"
_CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}
_OLD_SQLITE_NAME = "uq_feature_sets_tenant_id_cache_key"


def _old_name() -> str:
    return _OLD_SQLITE_NAME if op.get_bind().dialect.name == "sqlite" else _OLD_PG_NAME


def upgrade() -> None:
    with op.batch_alter_table("feature_sets", naming_convention=_CONVENTION) as batch_op:
        batch_op.drop_constraint(_old_name(), type_="unique")
        batch_op.create_unique_constraint("uq_feature_sets_version_key", ["tenant_id", "version_id", "cache_key"])
        batch_op.create_index("ix_feature_sets_tenant_key", ["tenant_id", "cache_key"], unique=False)


def downgrade() -> None:
    # Only one row per key can survive the old constraint: keep one of each.
    op.execute(
        "DELETE FROM feature_sets WHERE id NOT IN (SELECT MIN(id) FROM feature_sets GROUP BY tenant_id, cache_key)"
    )
    with op.batch_alter_table("feature_sets") as batch_op:
        batch_op.drop_index("ix_feature_sets_tenant_key")
        batch_op.drop_constraint("uq_feature_sets_version_key", type_="unique")
        batch_op.create_unique_constraint(_old_name(), ["tenant_id", "cache_key"])
