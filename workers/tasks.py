"""Thin, id-based Celery tasks, one per job kind, and the worker's life cycle: the reaper and sweeper
threads in the main process, and the drain on SIGTERM.

Each task claims its job row through ``run_job`` and calls the kind's body. A database outage while a job
is claimed or recorded does not drop the message: the task is retried later (and the reaper recovers the
job from its row in any case)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from core import jobs
from core.settings import get_settings
from core.sweeper import SweepThread
from workers.celery_app import app
from workers.jobs import BODIES, body
from workers.reaper import Reaper
from workers.runner import run_job

log = logging.getLogger(__name__)

DB_DOWN = (DBAPIError, PoolTimeout)


def _task(kind: str) -> Any:
    def run(self: Any, job_id: str) -> None:
        try:
            run_job(job_id, body(kind))
        except DB_DOWN as exc:
            raise self.retry(exc=exc, countdown=get_settings().reaper_interval_s, max_retries=None) from exc

    run.__name__ = run.__qualname__ = kind
    settings = get_settings()
    return app.task(
        name=f"tlserve.{kind}",
        bind=True,
        soft_time_limit=settings.soft_time_limit_s(kind),
        time_limit=settings.hard_time_limit_s(kind),
    )(run)


TASKS = {kind: _task(kind) for kind in BODIES}

_reaper: Reaper | None = None
_sweeper: SweepThread | None = None


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    """The worker's main process runs the reaper, so jobs are recovered wherever workers run, and the
    sweeper (every ``sweep_interval_s``), and exports the default backbones in the background if the
    installation's graph cache lacks them."""
    global _reaper, _sweeper
    _reaper = Reaper().start()
    _sweeper = SweepThread().start()
    threading.Thread(target=_warm, name="tlserve-warm", daemon=True).start()


def _warm() -> None:
    from workers.runtime.engines import select_device, warm

    try:
        if select_device() == "cpu":
            log.info("graph cache: %s", warm(get_settings().warm_backbones))
    except Exception:  # a missing weights file is the first job's error to report, not the worker's
        log.warning("could not export the default backbones ahead of the first job", exc_info=True)


@worker_shutting_down.connect
def _drain(**_: object) -> None:
    """SIGTERM (warm shutdown): this worker's running jobs go back to the queue at their next check (one
    batch); Celery waits for the tasks, which return as soon as their job is released, and a reaper
    elsewhere sends the jobs again."""
    if _reaper is not None:
        _reaper.stop(timeout=1.0)
    if _sweeper is not None:
        _sweeper.stop(timeout=1.0)
    # the pool's children name their leases after their parent, this process (``runner.worker_name``)
    prefix = os.environ.get("TLSERVE_WORKER_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    try:
        released = jobs.request_release(f"{prefix}/")
    except Exception:  # the database is down: the leases lapse and a reaper recovers the jobs
        log.warning("could not ask running jobs to drain", exc_info=True)
        return
    if released:
        log.warning("worker draining: %d running job(s) go back to the queue", released)
