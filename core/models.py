"""Models (a linear probe or a fine-tuned network on a dataset version), the comparison and
batch-prediction jobs that work on them: creation with their job, lookup scoped to a tenant, deletion.

Requests arrive here already validated (the service's schemas and the workers' registry); this module
only records them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import datasets as ds
from core.db import get_owned
from core.errors import Conflict, NotFound
from core.features import MODEL_PREFIX
from core.jobs import create_job, get_job
from core.keys import model_prefix, predictions_key, upload_key
from core.pagination import DEFAULT_LIMIT, Page, keyset_page
from core.status import ACTIVE_JOB, JobKind, JobStatus, ResourceStatus, ResourceType
from core.tables import Job, Model

STRATEGY_JOBS = {"linear_probe": JobKind.FIT, "finetune": JobKind.FINETUNE}


def create_model(
    session: Session,
    tenant_id: str,
    *,
    dataset_id: str,
    version: int | None,
    backbone: str,
    architecture: str,
    weights_digest: str,
    strategy: str,
    params: dict[str, Any],
    queue: str,
) -> tuple[Model, Job]:
    """A queued model and its training job (the caller submits it). ``backbone`` is what the user named
    (a registry name or ``model:<id>``); ``architecture`` the registered network underneath."""
    dv = ds.ready_version(session, tenant_id, dataset_id, version)
    model = Model(
        tenant_id=tenant_id,
        dataset_id=dataset_id,
        version_id=dv.id,
        backbone=backbone if backbone.startswith(MODEL_PREFIX) else architecture,
        strategy=strategy,
        params={**params, "queue": queue},
        storage_prefix="",
        lineage={
            "dataset_id": dataset_id,
            "dataset_version": dv.version,
            "version_id": dv.id,
            "backbone": backbone if backbone.startswith(MODEL_PREFIX) else architecture,
            "architecture": architecture,
            "weights_digest": weights_digest,
        },
    )
    session.add(model)
    session.flush()
    model.storage_prefix = model_prefix(tenant_id, model.id)
    job = create_job(
        session,
        tenant_id=tenant_id,
        kind=STRATEGY_JOBS[strategy],
        queue=queue,
        resource_type=ResourceType.MODEL,
        resource_id=model.id,
        params={"model_id": model.id},
    )
    model.job_id = job.id
    return model, job


def get_model(session: Session, tenant_id: str, model_id: str) -> Model:
    return get_owned(session, Model, tenant_id, model_id, "model")


def ready_model(session: Session, tenant_id: str, model_id: str) -> Model:
    model = get_model(session, tenant_id, model_id)
    if model.status != ResourceStatus.READY:
        raise Conflict(f"model {model_id!r} is {model.status}; predict once its training job has succeeded")
    return model


def serving_stamp(session: Session, tenant_id: str, model_id: str) -> str:
    """What a served predictor must still match: a digest of the ready row's artifact (storage prefix,
    backbone, strategy, lineage). ``NotFound`` when the row is gone, ``Conflict`` when it is not ready.
    Reads only those columns, never the metrics, so a server can ask every second."""
    row = session.execute(
        select(Model.status, Model.storage_prefix, Model.backbone, Model.strategy, Model.lineage).where(
            Model.id == model_id, Model.tenant_id == tenant_id
        )
    ).first()
    if row is None:
        raise NotFound(f"model {model_id!r} not found")
    if row.status != ResourceStatus.READY:
        raise Conflict(f"model {model_id!r} is {row.status}; predict once its training job has succeeded")
    payload = [row.storage_prefix, row.backbone, row.strategy, row.lineage]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def list_models(session: Session, tenant_id: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Model]:
    """A page of the tenant's models, oldest first."""
    stmt = select(Model).where(Model.tenant_id == tenant_id)
    return keyset_page(session, stmt, [Model.created_at, Model.id], limit, cursor)


def finetuned_models(session: Session, tenant_id: str) -> list[Model]:
    """The tenant's ready fine-tuned models (each usable as a backbone, ``model:<id>``)."""
    stmt = select(Model).where(
        Model.tenant_id == tenant_id, Model.strategy == "finetune", Model.status == ResourceStatus.READY
    )
    return list(session.scalars(stmt.order_by(Model.created_at)))


def delete_model(session: Session, tenant_id: str, model_id: str) -> str:
    """Delete the row and ask its running jobs to stop; returns the storage prefix to remove after commit."""
    model = get_model(session, tenant_id, model_id)
    for job in session.scalars(select(Job).where(Job.resource_id == model_id, Job.status.in_(ACTIVE_JOB))):
        job.cancel_requested = True
    session.delete(model)
    return model.storage_prefix


# --- jobs over models and datasets ---------------------------------------------------------------------------


def create_comparison(session: Session, tenant_id: str, *, dataset_id: str, version: int | None, params: dict) -> Job:
    """A comparison job (linear probes of several backbones on one dataset version)."""
    dv = ds.ready_version(session, tenant_id, dataset_id, version)
    return create_job(
        session,
        tenant_id=tenant_id,
        kind=JobKind.COMPARE,
        resource_type=ResourceType.DATASET,
        resource_id=dataset_id,
        params={**params, "dataset_id": dataset_id, "version": dv.version, "version_id": dv.id},
    )


def create_batch_prediction(
    session: Session, tenant_id: str, model_id: str, top_k: int, tta: list[str] | None = None
) -> tuple[Job, str]:
    """A queued batch-prediction job and the storage key its upload goes to (the caller stores it); ``tta``
    names checked test-time augmentations."""
    model = ready_model(session, tenant_id, model_id)
    job = create_job(
        session,
        tenant_id=tenant_id,
        kind=JobKind.PREDICT_BATCH,
        queue=model.params.get("queue", "cpu"),
        resource_type=ResourceType.MODEL,
        resource_id=model_id,
    )
    upload = upload_key(tenant_id, job.id, "images.zip")
    job.params = {"model_id": model_id, "upload_key": upload, "top_k": top_k, "tta": list(tta or [])}
    return job, upload


def batch_results_key(session: Session, tenant_id: str, model_id: str, job_id: str, fmt: str) -> str:
    model = get_model(session, tenant_id, model_id)
    job = get_job(session, tenant_id, job_id)
    if job.kind != JobKind.PREDICT_BATCH or job.resource_id != model_id:
        raise NotFound(f"no batch prediction {job_id!r} for model {model_id!r}")
    if job.status != JobStatus.SUCCEEDED:
        raise Conflict(f"batch prediction {job_id!r} is {job.status}; fetch its results once it has succeeded")
    return predictions_key(model.storage_prefix, job_id, fmt)
