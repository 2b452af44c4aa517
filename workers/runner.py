"""The one place where job status changes around a task body: claim under a lease, keep the lease alive,
run, then succeed, fail, cancel or give the job back.

A body marks its resource ready when it has built it; every other ending (failure, cancellation, a crash,
running out of attempts) goes through ``core.jobs``, which settles the resource the job was building."""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from typing import Any

from core import jobs
from core.errors import JobCancelled, JobReleased, LeaseLost, TLServeError
from core.settings import get_settings
from core.storage import get_storage

log = logging.getLogger(__name__)

JobBody = Callable[[jobs.JobContext], dict[str, Any] | None]


def worker_name() -> str:
    """This worker's name in lease owners: ``<node>/`` is what a drain of the whole worker matches."""
    return os.environ.get("TLSERVE_WORKER_NAME") or f"{socket.gethostname()}-{os.getppid()}"


def lease_owner() -> str:
    return f"{worker_name()}/{os.getpid()}/{threading.get_ident()}"


class Heartbeat:
    """A thread that renews the job's lease every ``heartbeat_s``, so a long batch never lets it lapse;
    when the lease turns out to be someone else's, it tells the job (``ctx.lease_lost``) and stops."""

    def __init__(self, ctx: jobs.JobContext) -> None:
        self.ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{ctx.job_id}", daemon=True)

    def _run(self) -> None:
        interval = get_settings().heartbeat_s
        while not self._stop.wait(interval):
            try:
                if not jobs.renew_lease(self.ctx.job_id, self.ctx.owner):
                    log.warning("job %s: lease lost by %s", self.ctx.job_id, self.ctx.owner)
                    self.ctx.lease_lost.set()
                    return
            except Exception:  # the database is down: keep trying; the lease lapses if it stays down
                log.warning("job %s: could not renew the lease", self.ctx.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


INTERNAL_ERROR_MESSAGE = (
    "the job stopped on an internal error; nothing you sent caused it. Retry it; if it fails again, "
    "report job {job_id} (the service's log has the details)"
)


def _time_limit_error() -> type[BaseException]:
    from celery.exceptions import SoftTimeLimitExceeded

    return SoftTimeLimitExceeded


def _cancel_requested(ctx: jobs.JobContext) -> bool:
    try:
        ctx.check_cancelled(force=True)
    except JobCancelled:
        return True
    except Exception:  # released, or the database is down: the failure stands
        return False
    return False


def run_job(job_id: str, body: JobBody, owner: str | None = None) -> None:
    owner = owner or lease_owner()
    ctx = jobs.begin_attempt(job_id, owner)
    if ctx is None:
        return
    log.info("job %s (%s) attempt %d started by %s", job_id, ctx.kind, ctx.attempt, owner)
    with Heartbeat(ctx):
        if _attempt(ctx, body, owner):
            _drop_upload(ctx)


def _attempt(ctx: jobs.JobContext, body: JobBody, owner: str) -> bool:
    """Run the body and record how it ended; ``True`` when this attempt recorded a failure or a cancel."""
    job_id = ctx.job_id
    try:
        metrics = body(ctx)
    except LeaseLost:
        log.warning("job %s: stopped; another worker holds it now", job_id)
    except JobReleased:
        if jobs.release(job_id, owner):  # unsent: the next reaper round, on any worker, sends it
            log.info("job %s: given back to the queue (worker draining)", job_id)
    except JobCancelled:
        log.info("job %s cancelled", job_id)
        return jobs.cancelled(job_id, owner)
    except TLServeError as exc:
        if _cancel_requested(ctx):  # e.g. its dataset was deleted under it: that is a cancel, not a fault
            log.info("job %s cancelled (it stopped on: %s)", job_id, exc.message)
            return jobs.cancelled(job_id, owner)
        log.info("job %s failed: %s", job_id, exc.message)
        return jobs.fail(job_id, exc.code, exc.message, owner)
    except _time_limit_error():
        limit = get_settings().soft_time_limit_s(ctx.kind)
        return jobs.fail(job_id, "time_limit", f"the job ran longer than its time limit ({limit} s)", owner)
    except Exception:  # a bug or an environment fault: recorded on the job, never lost
        # The details (SQL, parameters, storage keys, the traceback) go to the log, never to the user.
        if _cancel_requested(ctx):  # what it read was deleted with the cancel: not a fault
            log.info("job %s cancelled (it stopped on:\n%s)", job_id, traceback.format_exc())
            return jobs.cancelled(job_id, owner)
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        return jobs.fail(job_id, "internal_error", INTERNAL_ERROR_MESSAGE.format(job_id=job_id), owner)
    else:
        jobs.complete(job_id, metrics, owner)
        log.info("job %s succeeded", job_id)
    return False


def _drop_upload(ctx: jobs.JobContext) -> None:
    """A job that failed or was cancelled never reads its upload again (an archive of up to 512 MB): remove
    it now; whatever this misses (a worker killed here, a job cancelled while queued) the sweeper removes."""
    prefix = jobs.upload_of(ctx)
    if prefix is None:
        return
    try:
        get_storage().delete_prefix(prefix)
    except Exception:  # the store is unreachable: the sweeper removes it later
        log.warning("job %s: could not remove its upload", ctx.job_id, exc_info=True)
