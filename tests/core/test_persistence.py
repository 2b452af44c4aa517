"""Persistence on SQLite and PostgreSQL: migrations match the models, keys, jobs and their attempt cap."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core import jobs
from core.db import get_engine, session_scope
from core.errors import JobCancelled, NotFound, Unauthorized
from core.tables import ApiKey, Base, Job
from core.tenancy import authenticate, create_api_key, get_or_create_tenant


def test_migrations_match_the_models(db: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with get_engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_downgrade_then_upgrade(db: str) -> None:
    from sqlalchemy import inspect

    from core.db import dispose_engines
    from core.migrate import downgrade, upgrade

    downgrade(db, "base")
    dispose_engines()
    assert "jobs" not in inspect(get_engine()).get_table_names()
    upgrade(db)
    dispose_engines()
    assert {"tenants", "api_keys", "datasets", "dataset_versions", "images", "jobs"} <= set(
        inspect(get_engine()).get_table_names()
    )


def test_api_keys_are_hashed_and_checked(db: str) -> None:
    with session_scope() as s:
        key = create_api_key(s, "acme")
    with session_scope() as s:
        row = s.scalars(select(ApiKey)).one()
        assert key not in (row.key_hash, row.prefix) and len(row.key_hash) == 64
        tenant_id = authenticate(s, key).tenant_id
        assert tenant_id == row.tenant_id
        for bad in (None, "", key[:-1] + ("A" if key[-1] != "A" else "B"), "Bearer x", "tls_x", key + "x"):
            with pytest.raises(Unauthorized):
                authenticate(s, bad)


def test_tenant_names_are_unique(db: str) -> None:
    with session_scope() as s:
        a = get_or_create_tenant(s, "acme")
        b = get_or_create_tenant(s, "acme")
        assert a.id == b.id


def _job(tenant: str = "acme", max_attempts: int = 3) -> str:
    with session_scope() as s:
        t = get_or_create_tenant(s, tenant)
        return jobs.create_job(s, tenant_id=t.id, kind="ingest", max_attempts=max_attempts).id


def test_attempts_are_capped_in_the_database(db: str) -> None:
    job_id = _job(max_attempts=2)
    assert jobs.begin_attempt(job_id).attempt == 1  # worker dies: the row stays "running"
    assert jobs.begin_attempt(job_id).attempt == 2  # redelivered, resumes
    assert jobs.begin_attempt(job_id) is None  # third delivery: gives up
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and job.error["code"] == "too_many_attempts" and job.attempts == 2


def test_a_finished_job_redelivered_does_nothing(db: str) -> None:
    job_id = _job()
    jobs.begin_attempt(job_id)
    jobs.complete(job_id, {"n": 1})
    assert jobs.begin_attempt(job_id) is None
    jobs.fail(job_id, "x", "late failure must not overwrite success")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded" and job.metrics == {"n": 1} and job.attempts == 1


def test_cancel_queued_and_running_jobs(db: str) -> None:
    queued = _job()
    with session_scope() as s:
        tenant_id = s.get(Job, queued).tenant_id
        assert jobs.request_cancel(s, tenant_id, queued).status == "cancelled"
    assert jobs.begin_attempt(queued) is None

    running = _job()
    ctx = jobs.begin_attempt(running)
    ctx.check_cancelled(force=True)  # nothing requested yet
    with session_scope() as s:
        assert jobs.request_cancel(s, tenant_id, running).status == "running"
    with pytest.raises(JobCancelled):
        ctx.check_cancelled(force=True)


def test_jobs_are_scoped_to_their_tenant(db: str) -> None:
    job_id = _job("acme")
    with session_scope() as s:
        other = get_or_create_tenant(s, "globex")
        with pytest.raises(NotFound):
            jobs.get_job(s, other.id, job_id)


def test_progress_is_written_and_throttled(db: str) -> None:
    job_id = _job()
    ctx = jobs.begin_attempt(job_id)
    ctx.progress("decode", 0, 10)
    ctx.progress("decode", 1, 10)  # within the interval: not written
    with session_scope() as s:
        assert s.get(Job, job_id).progress == {"stage": "decode", "done": 0, "total": 10}
    ctx.progress("decode", 10, 10)  # completion is always written
    with session_scope() as s:
        assert s.get(Job, job_id).progress["done"] == 10
