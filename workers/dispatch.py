"""Send jobs to the workers. With a real broker the message goes to Celery; with ``memory://`` the job
runs in a thread of this process, so ``tlserve up`` works with nothing else installed.

The database is the outbox: a job's row is committed before its message is sent, and a message that could
not be sent (the broker is down) is sent again by the reaper once the broker is back."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from sqlalchemy.orm import Session

from core.settings import get_settings
from core.tables import Job
from workers.celery_app import app
from workers.jobs import body
from workers.runner import run_job

log = logging.getLogger(__name__)

TASKS = {
    "ingest": "tlserve.ingest",
    "extract": "tlserve.extract",
    "extract_shard": "tlserve.extract_shard",
    "fit": "tlserve.fit",
    "compare": "tlserve.compare",
    "finetune": "tlserve.finetune",
    "predict_batch": "tlserve.predict_batch",
}


@lru_cache(maxsize=1)
def _local_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlserve-job")


_local_pending: set[str] = set()  # in-process jobs sent and not yet finished (the memory broker's queue)
_local_lock = threading.Lock()


def enqueue(job_id: str, kind: str, queue: str = "cpu") -> None:
    """Send one message for a job (raises when the broker cannot be reached)."""
    task_name = TASKS[kind]
    settings = get_settings()
    if settings.broker_is_memory:
        with _local_lock:
            _local_pending.add(job_id)
        _local_executor().submit(_run_local, kind, job_id)
        return
    policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
    app.send_task(task_name, args=[job_id], queue=queue, retry=True, retry_policy=policy)


def send_quietly(job_id: str, kind: str, queue: str = "cpu") -> bool:
    """``enqueue``, logging instead of raising: the reaper sends the job later if this failed."""
    try:
        enqueue(job_id, kind, queue)
    except Exception as exc:  # the broker is down: the job row stays queued, the outbox has it
        log.warning(
            "could not send job %s now (%s: %s); it will be sent when the broker is back",
            job_id,
            type(exc).__name__,
            exc,
        )
        return False
    return True


def local_pending() -> set[str]:
    with _local_lock:
        return set(_local_pending)


def _run_local(kind: str, job_id: str) -> None:
    try:
        run_job(job_id, body(kind))
    except Exception:  # run_job records failures on the job; this is the last net for the thread
        log.exception("in-process job %s crashed", job_id)
    finally:
        with _local_lock:
            _local_pending.discard(job_id)


def submit(session: Session, *jobs: Job) -> None:
    """Commit the request's rows, then send its jobs: a job is only ever sent once its row exists, and a
    broker outage never fails the request (the reaper sends what could not be sent)."""
    session.commit()
    for job in jobs:
        send_quietly(job.id, job.kind, job.queue)
