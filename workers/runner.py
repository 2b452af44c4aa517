"""The one place where job status changes around a task body: claim, run, succeed, fail, cancel.

A body marks its resource ready when it has built it; every other ending (failure, cancellation, a crash,
running out of attempts) goes through ``core.jobs``, which settles the resource the job was building."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from core import jobs
from core.errors import JobCancelled, TLServeError

log = logging.getLogger(__name__)

JobBody = Callable[[jobs.JobContext], dict[str, Any] | None]


def run_job(job_id: str, body: JobBody) -> None:
    ctx = jobs.begin_attempt(job_id)
    if ctx is None:
        return
    log.info("job %s (%s) attempt %d started", job_id, ctx.kind, ctx.attempt)
    try:
        metrics = body(ctx)
    except JobCancelled:
        log.info("job %s cancelled", job_id)
        jobs.cancelled(job_id)
    except TLServeError as exc:
        log.info("job %s failed: %s", job_id, exc.message)
        jobs.fail(job_id, exc.code, exc.message)
    except Exception as exc:  # a bug or an environment fault: recorded on the job, never lost
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        jobs.fail(job_id, "internal_error", f"{type(exc).__name__}: {exc}")
    else:
        jobs.complete(job_id, metrics)
        log.info("job %s succeeded", job_id)
