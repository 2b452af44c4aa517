"""A job's error is a code and a message for the user: SQL, parameters, storage keys and tracebacks go to
the log only."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import DataError

from core import jobs
from core.db import session_scope
from core.tables import Job
from core.tenancy import get_or_create_tenant
from workers.runner import run_job


def test_a_crash_reaches_the_user_as_a_code_and_a_plain_message(db: str, caplog: pytest.LogCaptureFixture) -> None:
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        job_id = jobs.create_job(s, tenant_id=tenant.id, kind="ingest").id

    def body(ctx: jobs.JobContext) -> dict:
        raise DataError(
            "INSERT INTO images (id, filename) VALUES (%(id)s, %(filename)s)",
            {"filename": "tenants/tn_1/datasets/ds_1/blobs/ab/abcdef"},
            Exception("value too long for type character varying(500)"),
        )

    with caplog.at_level(logging.ERROR, logger="workers.runner"):
        run_job(job_id, body, owner="test")
    with session_scope() as s:
        job = s.get(Job, job_id)
        status, error = job.status, job.error
    assert status == "failed" and error["code"] == "internal_error"
    for leak in ("INSERT", "tenants/", "character varying", "Traceback", "DataError"):
        assert leak not in error["message"]
    assert job_id in error["message"]
    assert "INSERT INTO images" in caplog.text  # the operator still has everything


def test_each_job_kind_has_its_own_time_limit(db: str) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    from core.settings import get_settings
    from workers.tasks import TASKS

    settings = get_settings()
    assert TASKS["fit"].soft_time_limit == 3600 and TASKS["ingest"].soft_time_limit == 3600
    assert TASKS["finetune"].soft_time_limit == settings.job_soft_time_limit_s  # may run for hours
    for task in TASKS.values():
        assert task.soft_time_limit < task.time_limit < settings.visibility_timeout_s
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        job_id = jobs.create_job(s, tenant_id=tenant.id, kind="fit").id

    def body(ctx: jobs.JobContext) -> dict:
        raise SoftTimeLimitExceeded()

    run_job(job_id, body, owner="test")
    with session_scope() as s:
        error = s.get(Job, job_id).error
    assert error == {"code": "time_limit", "message": "the job ran longer than its time limit (3600 s)"}


def test_a_job_that_fails_because_it_was_cancelled_under_it_ends_cancelled(db: str) -> None:
    """Deleting a dataset cancels its extraction and deletes what the job reads: the job ends cancelled."""
    from core.errors import NotFound

    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        job_id = jobs.create_job(s, tenant_id=tenant.id, kind="extract").id

    def body(ctx: jobs.JobContext) -> dict:
        with session_scope() as s:
            s.get(Job, ctx.job_id).cancel_requested = True  # DELETE /v1/datasets/{id} meanwhile
        raise NotFound("feature set 'fs_1' no longer exists")

    run_job(job_id, body, owner="test")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.status == "cancelled" and job.error is None


@pytest.mark.parametrize(
    ("error", "upload_left"),
    [
        ("invalid", False),
        ("cancelled", False),
        ("crash", False),
        ("released", True),
        ("lease_lost", True),
        ("crash_after_takeover", True),  # not this worker's job any more: its failure is not recorded
    ],
)
def test_an_ingestion_that_ends_failed_or_cancelled_removes_its_upload(db: str, error: str, upload_left: bool) -> None:
    """A failed or cancelled job never reads its upload again; one given back to the queue, or now held by
    another worker, still needs it."""
    from core.errors import InvalidInput, JobCancelled, JobReleased, LeaseLost
    from core.keys import upload_key
    from core.storage import get_storage

    with session_scope() as s:
        tenant = get_or_create_tenant(s, "acme")
        job = jobs.create_job(s, tenant_id=tenant.id, kind="ingest")
        job.params = {"mode": "archive", "upload_key": upload_key(tenant.id, job.id)}
        job_id, key = job.id, job.params["upload_key"]
    get_storage().put_bytes(key, b"PK\x03\x04 an archive")

    def body(ctx: jobs.JobContext) -> dict:
        if error in ("lease_lost", "crash_after_takeover"):
            with session_scope() as s:
                s.get(Job, ctx.job_id).lease_owner = "another-worker"  # the reaper gave it to another worker
        raise {
            "invalid": InvalidInput("no usable images in the upload"),
            "cancelled": JobCancelled("cancelled"),
            "crash": RuntimeError("a bug"),
            "crash_after_takeover": RuntimeError("a bug"),
            "released": JobReleased("draining"),
            "lease_lost": LeaseLost("another worker holds it"),
        }[error]

    run_job(job_id, body, owner="test")
    assert get_storage().exists(key) is upload_left
