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


def test_two_concurrent_new_versions_give_one_version_and_a_conflict(db: str) -> None:
    """Both requests read version 1 as the latest; the second one's insert waits on the first's, then is
    told Conflict (409), never an IntegrityError (500)."""
    import threading
    import time

    import pytest
    from sqlalchemy import text

    from core.db import get_engine
    from core.errors import Conflict

    if not db.startswith("postgresql"):
        pytest.skip("SQLite serialises writers before they read; the race needs PostgreSQL")
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        dataset, first = ds.create_dataset(s, tenant.id, "d", {"seed": 1})
        first.status = "ready"
        dataset_id, tenant_id = dataset.id, tenant.id
    outcome: list[object] = []
    with session_scope() as s1:
        ds.new_version(s1, ds.get_dataset(s1, tenant_id, dataset_id))  # inserted, not yet committed

        def second() -> None:
            try:
                with session_scope() as s2:
                    outcome.append(ds.new_version(s2, ds.get_dataset(s2, tenant_id, dataset_id)).version)
            except Exception as exc:  # noqa: BLE001 - what the request would have answered
                outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        with get_engine().connect() as probe:
            while not probe.execute(waiting).scalar() and thread.is_alive():
                time.sleep(0.01)  # polling PostgreSQL until the second insert waits on the first's row lock
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
    with session_scope() as s:
        assert [v.version for v in ds.get_dataset(s, tenant_id, dataset_id).versions] == [1, 2]
