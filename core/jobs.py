"""Job bookkeeping. The job row is the source of truth: status, progress, attempts, error, metrics.

Workers see a job through ``JobContext``: progress updates (throttled), cooperative cancellation, and the
attempt cap kept in the database so that a message redelivered forever cannot run forever.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, object_session

from core import usage
from core.db import get_owned, session_scope
from core.errors import JobCancelled, JobReleased, LeaseLost
from core.keys import upload_prefix
from core.pagination import DEFAULT_LIMIT, Page, keyset_page
from core.settings import get_settings
from core.status import TERMINAL_JOB as TERMINAL
from core.status import JobStatus, ResourceStatus, VersionStatus
from core.tables import DatasetVersion, FeatureSet, Job, Model, Tenant, utcnow

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
    job = Job(
        tenant_id=tenant_id,
        kind=kind,
        queue=queue,
        resource_type=resource_type,
        resource_id=resource_id,
        params=params or {},
        progress={"stage": "queued", "done": 0, "total": 0},
        max_attempts=max_attempts or get_settings().max_attempts,
        enqueued_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    return get_owned(session, Job, tenant_id, job_id, "job")


def list_jobs(session: Session, tenant_id: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Job]:
    """A page of the tenant's jobs, newest first."""
    stmt = select(Job).where(Job.tenant_id == tenant_id)
    return keyset_page(session, stmt, [Job.created_at, Job.id], limit, cursor, descending=True)


def upload_of(job: Job | JobContext) -> str | None:
    """The storage prefix of the upload a job reads (an ingestion's archive or files, a batch prediction's
    images), or ``None``. Once the job has ended nothing reads it again."""
    if "upload_key" in job.params or "manifest_key" in job.params:
        return upload_prefix(job.tenant_id, job.id if isinstance(job, Job) else job.job_id)
    return None


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
    job.lease_owner, job.lease_expires_at, job.release_requested = None, None, False
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
    owner: str = ""
    queue: str = "cpu"
    lease_lost: threading.Event = field(default_factory=threading.Event, repr=False)
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
        """Raise ``JobCancelled`` when a cancel was requested, ``JobReleased`` when this worker is draining,
        ``LeaseLost`` when another worker took the job over; cheap enough to call every batch."""
        if self.lease_lost.is_set():
            raise LeaseLost(f"job {self.job_id}: the lease of {self.owner} was lost")
        now = time.monotonic()
        if not force and now - self._last_cancel_check < self.cancel_interval_s:
            return
        self._last_cancel_check = now
        with session_scope() as s:
            row = s.execute(select(Job.cancel_requested, Job.release_requested).where(Job.id == self.job_id)).first()
        if row is not None and row.cancel_requested:
            raise JobCancelled("cancelled on request")
        if row is not None and row.release_requested:
            raise JobReleased(f"job {self.job_id}: its worker is shutting down")

    def update_metrics(self, **metrics: Any) -> None:
        with session_scope() as s:
            job = s.get(Job, self.job_id)
            if job is not None:
                job.metrics = {**job.metrics, **metrics}


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _lease_live(job: Job, now: datetime) -> bool:
    expires = _aware(job.lease_expires_at)
    return job.lease_owner is not None and expires is not None and expires > now


QUOTA_WAIT = "a free slot of the tenant's concurrent-jobs quota"


def _at_job_quota(session: Session, job: Job, now: datetime) -> bool:
    """Whether the job's tenant runs its quota of jobs already (its own, else ``max_running_jobs_per_tenant``).
    The tenant row is locked (PostgreSQL) so that two workers claiming one tenant's jobs count in turn."""
    session.execute(select(Tenant.id).where(Tenant.id == job.tenant_id).with_for_update())
    running = usage.running_jobs(session, job.tenant_id, now, exclude=job.id)
    return running >= usage.quotas(session, job.tenant_id)[0]


def begin_attempt(job_id: str, owner: str = "") -> JobContext | None:
    """Claim a job for one attempt under a lease held by ``owner``, or ``None`` when it must not run
    (finished, cancelled, out of tries, or running under another worker's live lease), or when its tenant
    already runs ``max_running_jobs_per_tenant`` jobs (it stays queued and the reaper sends it again).

    A redelivered message for a job that already finished, or that another worker is running, lands here
    and exits without doing anything.
    """
    lease = timedelta(seconds=get_settings().lease_s)
    with session_scope() as s:
        job = _lock(s, job_id)
        now = utcnow()
        if job is None:
            log.warning("job %s does not exist; dropping the message", job_id)
            return None
        if job.status in TERMINAL:
            log.info("job %s is already %s; nothing to do", job_id, job.status)
            return None
        if job.status == JobStatus.RUNNING and job.lease_owner != owner and _lease_live(job, now):
            log.info("job %s is running under %s's live lease; dropping this message", job_id, job.lease_owner)
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
        if job.status == JobStatus.QUEUED and _at_job_quota(s, job, now):
            # The tenant already runs its share: the job waits queued, unsent, and the reaper sends it again
            # (next round), so one tenant's hundred jobs do not hold the workers from everyone else.
            log.info("job %s waits: tenant %s is at its concurrent job limit", job_id, job.tenant_id)
            job.enqueued_at = None
            job.progress = {**job.progress, "stage": "queued", "waiting_for": QUOTA_WAIT}
            return None
        if "waiting_for" in (job.progress or {}):
            job.progress = {k: v for k, v in job.progress.items() if k != "waiting_for"}
        job.attempts += 1
        job.status = JobStatus.RUNNING
        job.started_at = job.started_at or now
        job.error = None
        job.lease_owner, job.lease_expires_at, job.release_requested = owner, now + lease, False
        return JobContext(
            job_id=job.id,
            tenant_id=job.tenant_id,
            kind=job.kind,
            params=dict(job.params),
            attempt=job.attempts,
            owner=owner,
            queue=job.queue,
        )


def renew_lease(job_id: str, owner: str) -> bool:
    """The heartbeat: push the lease forward; ``False`` when ``owner`` no longer holds it."""
    expires = utcnow() + timedelta(seconds=get_settings().lease_s)
    with session_scope() as s:
        done = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
            .values(lease_expires_at=expires)
        )
        return bool(done.rowcount)


def release(job_id: str, owner: str) -> bool:
    """A draining worker gives its job back: queued again, unsent (the reaper sends it), lease cleared, the
    attempt not counted. ``True`` when the job went back to the queue."""
    with session_scope() as s:
        job = _lock(s, job_id)
        if job is None or job.status in TERMINAL or job.lease_owner != owner:
            return False
        if job.cancel_requested:
            _finish(job, JobStatus.CANCELLED)
            return False
        job.status = JobStatus.QUEUED
        job.attempts = max(0, job.attempts - 1)
        job.lease_owner, job.lease_expires_at, job.release_requested = None, None, False
        job.enqueued_at = None
        job.progress = {**job.progress, "stage": "queued"}
        return True


def request_release(owner_prefix: str) -> int:
    """Ask every job running under a lease of ``owner_prefix`` (one worker) to go back to the queue."""
    with session_scope() as s:
        done = s.execute(
            update(Job)
            .where(Job.status == JobStatus.RUNNING, Job.lease_owner.startswith(owner_prefix, autoescape=True))
            .values(release_requested=True)
        )
        return int(done.rowcount)


def requeue_expired(now: datetime | None = None) -> list[Job]:
    """Jobs whose worker stopped renewing its lease (killed, machine gone) go back to ``queued``, to be sent
    again; returns them (detached). The attempt cap in ``begin_attempt`` still applies."""
    now = now or utcnow()
    stale_update = now - timedelta(seconds=get_settings().lease_s)
    expired = or_(
        Job.lease_expires_at < now,
        (Job.lease_expires_at.is_(None) & (Job.updated_at < stale_update)),  # running from before leases
    )
    with session_scope() as s:
        rows = list(
            s.scalars(select(Job).where(Job.status == JobStatus.RUNNING, expired).with_for_update(skip_locked=True))
        )
        for job in rows:
            log.warning("job %s: the lease of %s expired; back to the queue", job.id, job.lease_owner)
            job.status = JobStatus.QUEUED
            job.lease_owner, job.lease_expires_at, job.release_requested = None, None, False
            job.enqueued_at = None  # not sent yet: the reaper sends it now, or next round if the broker is down
            job.progress = {**job.progress, "stage": "queued"}
        s.flush()
        s.expunge_all()
    return rows


def unsent_queued(now: datetime | None = None) -> list[Job]:
    """Queued jobs last sent more than ``queued_grace_s`` ago (detached): candidates for sending again when
    the broker holds no message for them (the database is the outbox)."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=get_settings().queued_grace_s)
    stmt = select(Job).where(Job.status == JobStatus.QUEUED, or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff))
    with session_scope() as s:
        rows = list(s.scalars(stmt.order_by(Job.created_at).limit(1000)))
        s.expunge_all()
    return rows


def mark_sent(job_ids: list[str]) -> None:
    if not job_ids:
        return
    with session_scope() as s:
        s.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=utcnow()))


def _still_ours(job: Job | None, owner: str | None) -> bool:
    """A worker records an outcome only while it holds the job (a reaped job belongs to its next worker)."""
    if job is None or job.status in TERMINAL:
        return False
    if owner is not None and job.lease_owner not in (owner, None):
        log.warning("job %s is now held by %s; not recording %s's outcome", job.id, job.lease_owner, owner)
        return False
    return True


def complete(job_id: str, metrics: dict[str, Any] | None = None, owner: str | None = None) -> None:
    with session_scope() as s:
        job = _lock(s, job_id)
        if not _still_ours(job, owner):
            return
        if metrics:
            job.metrics = {**job.metrics, **metrics}
        job.progress = {**job.progress, "stage": "done"}
        _finish(job, JobStatus.SUCCEEDED)


def fail(job_id: str, code: str, message: str, owner: str | None = None) -> bool:
    """Record a failure; ``False`` when the job is no longer this owner's (nothing recorded)."""
    with session_scope() as s:
        job = _lock(s, job_id)
        if not _still_ours(job, owner):
            return False
        _finish(job, JobStatus.FAILED, {"code": code, "message": message})
        return True


def cancelled(job_id: str, owner: str | None = None) -> bool:
    """Record a cancel; ``False`` when the job is no longer this owner's (nothing recorded)."""
    with session_scope() as s:
        job = _lock(s, job_id)
        if not _still_ours(job, owner):
            return False
        _finish(job, JobStatus.CANCELLED)
        return True
