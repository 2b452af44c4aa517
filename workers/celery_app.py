"""The Celery app. Messages carry a job id and nothing else (JSON only); a task is acknowledged after it
finishes (``acks_late``), one message at a time per process (prefetch 1).

Recovery does not rest on the broker: a running job holds a lease renewed by a heartbeat, and the reaper
thread started in every worker's main process re-sends jobs whose lease expired or whose message was
lost. On SIGTERM the worker drains: running jobs give themselves back to the queue at their next check
(one batch) and resume from their last checkpoint or chunk elsewhere. Time limits sit below the broker's
visibility timeout."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from core.db import dispose_engines
from core.settings import get_settings
from workers.runtime.threads import configure_threads

QUEUES = ("cpu", "gpu")


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("tlserve", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.broker_restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.publish_timeout_s,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_time_limit_s,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


app = make_celery()


@worker_process_init.connect
def _init_worker_process(**_: object) -> None:
    """Each forked worker process gets its own database connections and thread limits."""
    dispose_engines()
    configure_threads()
