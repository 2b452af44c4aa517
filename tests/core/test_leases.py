"""Leases, the reaper's queries and final states, on SQLite and PostgreSQL (real databases)."""

from __future__ import annotations

from datetime import timedelta

from core import jobs
from core.db import session_scope
from core.status import ResourceType
from core.tables import Dataset, DatasetVersion, FeatureSet, Job, Model, utcnow
from core.tenancy import get_or_create_tenant


def _job(kind: str = "extract", **extra) -> str:  # type: ignore[no-untyped-def]
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        job = jobs.create_job(s, tenant_id=tenant.id, kind=kind, **extra)
        return job.id


def test_a_live_lease_refuses_a_second_worker_until_it_expires(db: str) -> None:
    job_id = _job()
    first = jobs.begin_attempt(job_id, "w1/1/1")
    assert first is not None and first.attempt == 1
    assert jobs.begin_attempt(job_id, "w2/1/1") is None  # a duplicate message: dropped
    assert jobs.renew_lease(job_id, "w1/1/1") and not jobs.renew_lease(job_id, "w2/1/1")

    with session_scope() as s:  # the first worker died: its lease ran out
        s.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    assert [j.id for j in jobs.requeue_expired()] == [job_id]
    second = jobs.begin_attempt(job_id, "w2/1/1")
    assert second is not None and second.attempt == 2
    assert not jobs.renew_lease(job_id, "w1/1/1")  # the old owner learns it lost the job
    jobs.complete(job_id, {"x": 1}, owner="w1/1/1")  # ... and cannot record an outcome
    with session_scope() as s:
        assert s.get(Job, job_id).status == "running"
    jobs.complete(job_id, {"x": 1}, owner="w2/1/1")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded" and job.lease_owner is None and job.lease_expires_at is None


def test_release_gives_the_job_back_unsent_and_uncounted(db: str) -> None:
    job_id = _job()
    jobs.begin_attempt(job_id, "node-7/11/1")
    assert jobs.request_release("node-7/") == 1 and jobs.request_release("node-8/") == 0
    assert jobs.release(job_id, "node-7/11/1")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempts, job.enqueued_at, job.lease_owner) == ("queued", 0, None, None)
    assert job_id in {j.id for j in jobs.unsent_queued()}
    jobs.mark_sent([job_id])
    assert job_id not in {j.id for j in jobs.unsent_queued()}


def test_every_ending_settles_what_the_job_was_building(db: str) -> None:
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        dataset = Dataset(tenant_id=tenant.id, name="d")
        s.add(dataset)
        s.flush()
        version = DatasetVersion(dataset_id=dataset.id, version=1, status="processing", params={})
        s.add(version)
        s.flush()
        ingest = jobs.create_job(s, tenant_id=tenant.id, kind="ingest", resource_type=ResourceType.DATASET)
        extract = jobs.create_job(s, tenant_id=tenant.id, kind="extract", resource_type=ResourceType.FEATURES)
        fit = jobs.create_job(s, tenant_id=tenant.id, kind="fit", resource_type=ResourceType.MODEL)
        version.job_id = ingest.id
        fs = FeatureSet(
            tenant_id=tenant.id,
            cache_key="k",
            dataset_id=dataset.id,
            version_id=version.id,
            backbone="b",
            weights_digest="w",
            engine="e",
            storage_prefix="p",
            feature_dim=1,
            num_images=0,
            status="queued",
            job_id=extract.id,
        )
        model = Model(
            tenant_id=tenant.id,
            dataset_id=dataset.id,
            version_id=version.id,
            backbone="b",
            strategy="finetune",
            params={},
            storage_prefix="p",
            lineage={},
            status="running",
            job_id=fit.id,
        )
        s.add_all([fs, model])
        s.flush()
        ids = (tenant.id, ingest.id, extract.id, fit.id, version.id, fs.id, model.id)
    tenant_id, ingest_id, extract_id, fit_id, version_id, fs_id, model_id = ids
    with session_scope() as s:
        jobs.request_cancel(s, tenant_id, ingest_id)  # cancelled while queued
    jobs.begin_attempt(extract_id, "w/1/1")
    jobs.fail(extract_id, "boom", "it broke", owner="w/1/1")
    with session_scope() as s:
        s.get(Job, fit_id).attempts = 3  # out of attempts when its message comes back
    assert jobs.begin_attempt(fit_id, "w/1/1") is None
    with session_scope() as s:
        assert s.get(DatasetVersion, version_id).status == "cancelled"
        assert s.get(FeatureSet, fs_id).status == "failed"
        assert s.get(Model, model_id).status == "failed"
        assert s.get(Job, fit_id).error["code"] == "too_many_attempts"
