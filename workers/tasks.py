"""Thin, id-based Celery tasks. Each loads its job row through ``run_job`` and calls a plain function."""

from __future__ import annotations

from workers.celery_app import app
from workers.runner import run_job


@app.task(name="tlserve.ingest")
def ingest(job_id: str) -> None:
    from workers.jobs.ingest import ingest_job

    run_job(job_id, ingest_job)


@app.task(name="tlserve.extract")
def extract(job_id: str) -> None:
    from workers.jobs.extract import extract_job

    run_job(job_id, extract_job)


@app.task(name="tlserve.fit")
def fit(job_id: str) -> None:
    from workers.jobs.fit import fit_job

    run_job(job_id, fit_job)


@app.task(name="tlserve.compare")
def compare(job_id: str) -> None:
    from workers.jobs.compare import compare_job

    run_job(job_id, compare_job)


@app.task(name="tlserve.finetune")
def finetune(job_id: str) -> None:
    from workers.jobs.finetune import finetune_job

    run_job(job_id, finetune_job)


@app.task(name="tlserve.predict_batch")
def predict_batch(job_id: str) -> None:
    from workers.jobs.batch_predict import batch_predict_job

    run_job(job_id, batch_predict_job)
