"""Quotas counted in the database (issue 10, item 4), on SQLite and PostgreSQL: a tenant at its concurrent
job limit has its next job wait queued (and sent again by the reaper) while other tenants' jobs run; stored
bytes refuse an upload that would pass the quota with 403 ``quota_exceeded``."""

from __future__ import annotations

import pytest

from core import jobs, usage
from core.db import session_scope
from core.errors import QuotaExceeded
from core.settings import reset_settings
from core.tables import Dataset, DatasetVersion, Image, Job
from core.tenancy import get_or_create_tenant


def _job(tenant: str) -> str:
    with session_scope() as s:
        return jobs.create_job(s, tenant_id=get_or_create_tenant(s, tenant).id, kind="extract").id


def test_a_tenant_at_its_job_limit_waits_queued_while_others_run(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLSERVE_MAX_RUNNING_JOBS_PER_TENANT", "1")
    reset_settings()
    first, second, theirs = _job("acme"), _job("acme"), _job("globex")
    jobs.mark_sent([first, second, theirs])

    assert jobs.begin_attempt(first, "w1/1/1") is not None
    assert jobs.begin_attempt(second, "w2/1/1") is None  # acme runs its one job already: given back
    with session_scope() as s:
        job = s.get(Job, second)
        assert (job.status, job.attempts, job.enqueued_at) == ("queued", 0, None)
        assert job.progress["waiting_for"] == jobs.QUOTA_WAIT  # the user sees why it waits
    assert second in {j.id for j in jobs.unsent_queued()}  # the reaper sends it again next round
    assert jobs.begin_attempt(theirs, "w2/1/1") is not None  # another tenant is not held back

    jobs.complete(first, owner="w1/1/1")  # a slot frees
    again = jobs.begin_attempt(second, "w2/1/2")
    assert again is not None and again.attempt == 1
    with session_scope() as s:
        assert "waiting_for" not in s.get(Job, second).progress


def _images(tenant: str, sizes: list[int], versions: int = 1) -> str:
    with session_scope() as s:
        tenant_id = get_or_create_tenant(s, tenant).id
        dataset = Dataset(tenant_id=tenant_id, name="d")
        s.add(dataset)
        s.flush()
        for v in range(1, versions + 1):
            version = DatasetVersion(dataset_id=dataset.id, version=v, status="ready")
            s.add(version)
            s.flush()
            for i, size in enumerate(sizes):  # every version holds the same images: stored once
                s.add(
                    Image(
                        version_id=version.id,
                        sha256=f"{i:064x}",
                        filename=f"{i}.png",
                        label="a",
                        split="train",
                        width=8,
                        height=8,
                        size_bytes=size,
                        format="PNG",
                        storage_key="k",
                        canonical_key="c",
                    )
                )
        return tenant_id


def test_stored_bytes_count_each_image_once_and_refuse_past_the_quota(db: str, monkeypatch) -> None:
    monkeypatch.setenv("TLSERVE_MAX_STORED_BYTES_PER_TENANT", "1000")
    reset_settings()
    tenant_id = _images("acme", [300, 400], versions=2)
    other = _images("globex", [900])
    with session_scope() as s:
        assert usage.stored_bytes(s, tenant_id) == 700 and usage.stored_bytes(s, other) == 900
        usage.check_storage(s, tenant_id, 300)  # exactly at the quota is allowed
        with pytest.raises(QuotaExceeded) as refused:
            usage.check_storage(s, tenant_id, 301)
        assert refused.value.status_code == 403 and refused.value.retry_after is None
        counts = usage.usage(s, tenant_id)
    assert counts["stored_bytes"] == 700 and counts["datasets"] == 1
    assert counts["limits"]["max_stored_bytes"] == 1000


def test_a_tenant_s_own_quotas_override_the_defaults(db: str) -> None:
    first, second = _job("acme"), _job("acme")
    tenant_id = _images("acme", [600])
    with session_scope() as s:
        assert usage.quotas(s, tenant_id)[0] == 8  # the settings' default
        usage.set_quotas(s, tenant_id, max_running_jobs=1, max_stored_bytes=1000)
    assert jobs.begin_attempt(first, "w1/1/1") is not None
    assert jobs.begin_attempt(second, "w2/1/1") is None  # this tenant's own cap of one job
    with session_scope() as s:
        with pytest.raises(QuotaExceeded):
            usage.check_storage(s, tenant_id, 401)
        assert usage.usage(s, tenant_id)["limits"]["max_running_jobs"] == 1
        usage.set_quotas(s, tenant_id, max_running_jobs=None, max_stored_bytes=None)  # back to the defaults
        usage.check_storage(s, tenant_id, 401)
    assert jobs.begin_attempt(second, "w2/1/1") is not None
