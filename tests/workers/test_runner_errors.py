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
