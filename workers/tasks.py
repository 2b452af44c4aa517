"""Thin, id-based Celery tasks. Each loads its job row through ``run_job`` and calls a plain function."""

from __future__ import annotations

from workers.celery_app import app
from workers.jobrunner import run_job


@app.task(name="tlserve.ingest")
def ingest(job_id: str) -> None:
    from workers.datasets import ingest_job

    run_job(job_id, ingest_job)
