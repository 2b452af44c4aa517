"""Enqueue a job. With a real broker the message goes to Celery; with ``memory://`` the job runs in a
thread of this process, so ``tlserve up`` works with nothing else installed."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from sqlalchemy.orm import Session

from core.settings import get_settings
from core.tables import Job

log = logging.getLogger(__name__)

TASKS = {
    "ingest": "tlserve.ingest",
    "extract": "tlserve.extract",
    "fit": "tlserve.fit",
    "compare": "tlserve.compare",
    "finetune": "tlserve.finetune",
    "predict_batch": "tlserve.predict_batch",
}


@lru_cache(maxsize=1)
def _local_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlserve-job")


def enqueue(job_id: str, kind: str, queue: str = "cpu") -> None:
    task_name = TASKS[kind]
    if get_settings().broker_is_memory:
        from workers import tasks  # noqa: F401  (registers the task functions)
        from workers.celery_app import app

        fn = app.tasks[task_name]
        _local_executor().submit(_run_local, fn, job_id)
        return
    from workers.celery_app import app

    app.send_task(task_name, args=[job_id], queue=queue)


def _run_local(fn, job_id: str) -> None:  # type: ignore[no-untyped-def]
    try:
        fn.run(job_id)
    except Exception:  # run_job records failures on the job; this is the last net for the thread
        log.exception("in-process job %s crashed", job_id)


def submit(session: Session, *jobs: Job) -> None:
    """Commit the request's rows, then enqueue its jobs: a job is only ever sent once its row exists."""
    session.commit()
    for job in jobs:
        enqueue(job.id, job.kind, job.queue)
