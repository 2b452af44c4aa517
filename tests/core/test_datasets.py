"""Dataset versions: a new version after a failed or cancelled first one keeps the dataset's split settings."""

from __future__ import annotations

from core import datasets as ds
from core.db import session_scope
from core.tenancy import get_or_create_tenant


def test_a_version_after_a_cancelled_one_keeps_the_split_settings(db: str) -> None:
    params = {"val_fraction": 0.15, "test_fraction": 0.25, "seed": 4}
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        dataset, first = ds.create_dataset(s, tenant.id, "d", params)
        first.status, first.params = "cancelled", {**params, "error": "ingestion cancelled"}
        second = ds.new_version(s, dataset)
        assert second.version == 2
        assert second.params == {**params, "parent_version_id": None}
