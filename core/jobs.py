"""Job bookkeeping. The job row is the source of truth: status, progress, attempts, error, metrics.

Workers see a job through ``JobContext``: progress updates (throttled), cooperative cancellation, and the
attempt cap kept in the database so that a message redelivered forever cannot run forever.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from core.db import get_owned, session_scope
from core.errors import JobCancelled
from core.status import TERMINAL_JOB as TERMINAL
from core.status import JobStatus, ResourceStatus, VersionStatus
from core.tables import DatasetVersion, FeatureSet, Job, Model, utcnow

log = logging.getLogger(__name__)


def create_job(
    session: Session,
    *,
    tenant_id: str,
    kind: str,
    queue: str = "cpu",
    resource_type: str | None = None,
    resource_id: str | None = None,
    params: dict[str, Any] | None = None,
    max_attempts: int | None = None,
) -> Job:
    from core.settings import get_settings

    job = Job(
        tenant_id=tenant_id,
        kind=kind,
        queue=queue,
        resource_type=resource_type,
        resource_id=resource_id,
        params=params or {},
        progress={"stage": "queued", "done": 0, "total": 0},
        max_attempts=max_attempts or get_settings().max_attempts,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    return get_owned(session, Job, tenant_id, job_id, "job")


def list_jobs(session: Session, tenant_id: str, limit: int = 100) -> list[Job]:
    stmt = select(Job).where(Job.tenant_id == tenant_id).order_by(Job.created_at.desc()).limit(limit)
    return list(session.scalars(stmt))


def request_cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one at its next cancellation check (one batch)."""
    job = get_job(session, tenant_id, job_id)
    if job.status in TERMINAL:
        return job
    job.cancel_requested = True
    if job.status == JobStatus.QUEUED:
        _finish(job, JobStatus.CANCELLED)
    return job


def _finish(job: Job, status: JobStatus, error: dict[str, Any] | None = None) -> None:
    """The one place a job reaches a final state; what it was working on is settled with it."""
    job.status = status
    job.finished_at = utcnow()
    if error is not None:
        job.error = error
    session = object_session(job)
    if session is not None and status != JobStatus.SUCCEEDED:
        settle_resources(session, job.id, status, (error or {}).get("message"))


def settle_resources(session: Session, job_id: str, status: JobStatus, message: str | None = None) -> None:
    """Mark every dataset version, feature set and model that ``job_id`` was building and did not finish as
    failed or cancelled, so that nothing waits forever on a job that has ended."""
    outcome = "cancelled" if status == JobStatus.CANCELLED else "failed"
    for version in session.scalars(
        select(DatasetVersion).where(DatasetVersion.job_id == job_id, DatasetVersion.status == VersionStatus.PROCESSING)
    ):
        version.status = outcome
        version.params = {**version.params, "error": message or f"ingestion {outcome}"}
    building = (ResourceStatus.QUEUED, ResourceStatus.RUNNING)
    for table in (FeatureSet, Model):
        for row in session.scalars(select(table).where(table.job_id == job_id, table.status.in_(building))):
            row.status = outcome


def _lock(session: Session, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


@dataclass
class JobContext:
    """What a running job may do to its row. Each call uses its own short transaction."""

    job_id: str
    tenant_id: str
    kind: str
    params: dict[str, Any]
    attempt: int
    progress_interval_s: float = 0.5
    cancel_interval_s: float = 0.5
    _last_progress: float = field(default=0.0, repr=False)
    _last_stage: str | None = field(default=None, repr=False)
    _last_cancel_check: float = field(default=0.0, repr=False)

    def progress(self, stage: str, done: int, total: int, *, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not (
            force or stage != self._last_stage or done >= total or now - self._last_progress >= self.progress_interval_s
        ):
            return
        self._last_progress, self._last_stage = now, stage
        with session_scope() as s:
            job = s.get(Job, self.job_id)
            if job is not None:
                job.progress = {"stage": stage, "done": done, "total": total, **extra}

    def check_cancelled(self, *, force: bool = False) -> None:
        """Raise ``JobCancelled`` when a cancel was requested; cheap enough to call every batch."""
        now = time.monotonic()
        if not force and now - self._last_cancel_check < self.cancel_interval_s:
            return
        self._last_cancel_check = now
        with session_scope() as s:
            requested = s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        if requested:
            raise JobCancelled("cancelled on request")

    def update_metrics(self, **metrics: Any) -> None:
        with session_scope() as s:
            job = s.get(Job, self.job_id)
            if job is not None:
                job.metrics = {**job.metrics, **metrics}


def begin_attempt(job_id: str) -> JobContext | None:
    """Claim a job for one attempt, or ``None`` when it must not run (finished, cancelled, out of tries).

    A redelivered message for a job that already finished lands here and exits without doing anything.
    """
    with session_scope() as s:
        job = _lock(s, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        if job.status in TERMINAL:
            log.info("job %s is already %s; nothing to do", job_id, job.status)
            return None
        if job.cancel_requested:
            _finish(job, JobStatus.CANCELLED)
            return None
        if job.attempts >= job.max_attempts:
            _finish(
                job,
                JobStatus.FAILED,
                {
                    "code": "too_many_attempts",
                    "message": f"gave up after {job.attempts} attempts (the worker died each time)",
                },
            )
            return None
        job.attempts += 1
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or utcnow()
        job.error = None
        return JobContext(
            job_id=job.id, tenant_id=job.tenant_id, kind=job.kind, params=dict(job.params), attempt=job.attempts
        )


def complete(job_id: str, metrics: dict[str, Any] | None = None) -> None:
    with session_scope() as s:
        job = _lock(s, job_id)
        if job is None or job.status in TERMINAL:
            return
        if metrics:
            job.metrics = {**job.metrics, **metrics}
        job.progress = {**job.progress, "stage": "done"}
        _finish(job, JobStatus.SUCCEEDED)


def fail(job_id: str, code: str, message: str) -> None:
    with session_scope() as s:
        job = _lock(s, job_id)
        if job is None or job.status in TERMINAL:
            return
        _finish(job, JobStatus.FAILED, {"code": code, "message": message})


def cancelled(job_id: str) -> None:
    with session_scope() as s:
        job = _lock(s, job_id)
        if job is None or job.status in TERMINAL:
            return
        _finish(job, JobStatus.CANCELLED)
