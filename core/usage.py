"""A tenant's usage, counted in the database: what quotas are checked against and what ``GET /v1/usage``
shows. Stored bytes are the tenant's images, each counted once per dataset (versions share their bytes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import InvalidInput, NotFound, QuotaExceeded
from core.settings import get_settings
from core.status import JobStatus
from core.tables import Dataset, DatasetVersion, FeatureSet, Image, Job, Model, Tenant, utcnow


def quotas(session: Session, tenant_id: str) -> tuple[int, int]:
    """(max running jobs, max stored bytes) of a tenant: its own values where set, else the settings'."""
    settings = get_settings()
    jobs_cap, bytes_cap = own_quotas(session, tenant_id)
    return (
        settings.max_running_jobs_per_tenant if jobs_cap is None else jobs_cap,
        settings.max_stored_bytes_per_tenant if bytes_cap is None else bytes_cap,
    )


def own_quotas(session: Session, tenant_id: str) -> tuple[int | None, int | None]:
    """The tenant's own (max running jobs, max stored bytes); ``None`` where it follows the settings."""
    row = session.execute(
        select(Tenant.max_running_jobs, Tenant.max_stored_bytes).where(Tenant.id == tenant_id)
    ).first()
    return (row.max_running_jobs, row.max_stored_bytes) if row is not None else (None, None)


def tenant_named(session: Session, name: str) -> str:
    tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == name.strip()))
    if tenant_id is None:
        raise NotFound(f"no tenant {name!r}: tenants are made by 'tlserve keys create --tenant NAME'")
    return tenant_id


def set_quotas(session: Session, tenant_id: str, *, max_running_jobs: int | None, max_stored_bytes: int | None) -> None:
    """Set a tenant's own quotas (``None``: back to the settings' default)."""
    for name, value in (("max_running_jobs", max_running_jobs), ("max_stored_bytes", max_stored_bytes)):
        if value is not None and value < (1 if name == "max_running_jobs" else 0):
            raise InvalidInput(f"{name} must be at least {1 if name == 'max_running_jobs' else 0}, got {value}")
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id!r} not found")
    tenant.max_running_jobs, tenant.max_stored_bytes = max_running_jobs, max_stored_bytes
    session.flush()


def stored_bytes(session: Session, tenant_id: str) -> int:
    per_image = (
        select(Dataset.id.label("d"), Image.sha256, Image.size_bytes)
        .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
        .join(Image, Image.version_id == DatasetVersion.id)
        .where(Dataset.tenant_id == tenant_id)
        .distinct()
        .subquery()
    )
    return int(session.scalar(select(func.coalesce(func.sum(per_image.c.size_bytes), 0))) or 0)


def running_jobs(session: Session, tenant_id: str, now: datetime | None = None, exclude: str | None = None) -> int:
    """Jobs of the tenant running under a live lease (a dead worker's job stops counting when its lease ends)."""
    stmt = select(func.count(Job.id)).where(
        Job.tenant_id == tenant_id, Job.status == JobStatus.RUNNING, Job.lease_expires_at > (now or utcnow())
    )
    if exclude is not None:
        stmt = stmt.where(Job.id != exclude)
    return int(session.scalar(stmt) or 0)


def check_storage(session: Session, tenant_id: str, incoming_bytes: int) -> None:
    """``QuotaExceeded`` (403, no Retry-After: waiting does not help) when the upload would pass the quota."""
    limit = quotas(session, tenant_id)[1]
    used = stored_bytes(session, tenant_id)
    if used + max(0, incoming_bytes) > limit:
        raise QuotaExceeded(
            f"storage quota exceeded: {used} bytes stored, this upload {incoming_bytes} bytes, quota {limit} bytes; "
            "delete datasets to make room",
            details={"stored_bytes": used, "incoming_bytes": incoming_bytes, "max_stored_bytes": limit},
        )


def _count(session: Session, table: Any, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).select_from(table).where(table.tenant_id == tenant_id)) or 0)


def usage(session: Session, tenant_id: str) -> dict[str, Any]:
    settings = get_settings()
    max_running, max_bytes = quotas(session, tenant_id)
    queued = session.scalar(
        select(func.count(Job.id)).where(Job.tenant_id == tenant_id, Job.status == JobStatus.QUEUED)
    )
    return {
        "tenant_id": tenant_id,
        "stored_bytes": stored_bytes(session, tenant_id),
        "datasets": _count(session, Dataset, tenant_id),
        "feature_sets": _count(session, FeatureSet, tenant_id),
        "models": _count(session, Model, tenant_id),
        "jobs_running": running_jobs(session, tenant_id),
        "jobs_queued": int(queued or 0),
        "limits": {
            "rate_limit": settings.rate_limit,
            "max_running_jobs": max_running,
            "max_stored_bytes": max_bytes,
            "max_event_streams": settings.max_event_streams_per_tenant,
            "predict_queue_size": settings.batch_queue_size,
            "predict_deadline_s": settings.batch_deadline_s,
        },
    }
