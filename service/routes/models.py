"""/v1/models: train (linear probe or fine-tune) as a job, inspect, delete, and predict."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from core.errors import Conflict, NotFound
from core.storage import get_storage
from service.deps import SessionDep, SettingsDep, TenantDep
from service.uploads import read_files, save_archive
from workers import models as mdl
from workers.dispatch import enqueue
from workers.inference import decode_files, per_file
from workers.predict import PREDICTORS, top_k_rows

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: str
    backbone: str = "efficientnet_lite0"
    strategy: Literal["linear_probe", "finetune"] = "linear_probe"
    head: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1)
    allow_random_weights: bool = False
    queue: Literal["cpu", "gpu"] = "cpu"
    seed: int = 0


@router.post("", status_code=202)
def create_model(body: ModelRequest, session: SessionDep, tenant_id: TenantDep) -> dict[str, Any]:
    model, job = mdl.plan_model(
        session,
        tenant_id,
        dataset_id=body.dataset_id,
        backbone=body.backbone,
        strategy=body.strategy,
        head=body.head,
        finetune=body.finetune,
        version=body.version,
        allow_random_weights=body.allow_random_weights,
        queue=body.queue,
        seed=body.seed,
    )
    session.commit()
    enqueue(job.id, job.kind, job.queue)
    return {"id": model.id, "job_id": job.id, "status": model.status}


@router.get("")
def list_models(session: SessionDep, tenant_id: TenantDep) -> list[dict[str, Any]]:
    return [mdl.model_to_dict(m) for m in mdl.list_models(session, tenant_id)]


@router.get("/{model_id}")
def get_model(model_id: str, session: SessionDep, tenant_id: TenantDep) -> dict[str, Any]:
    return mdl.model_to_dict(mdl.get_model(session, tenant_id, model_id))


@router.delete("/{model_id}", status_code=204)
def delete_model(model_id: str, session: SessionDep, tenant_id: TenantDep) -> None:
    prefix = mdl.delete_model(session, tenant_id, model_id)
    session.commit()
    PREDICTORS.forget(model_id)
    get_storage().delete_prefix(prefix)


def _prepare(tenant_id: str, model_id: str, payload: list[tuple[str, bytes]]) -> tuple[Any, Any]:
    predictor = PREDICTORS.get(tenant_id, model_id)
    return predictor, decode_files(payload, predictor.spec)


@router.post("/{model_id}/predict")
async def predict(
    model_id: str,
    request: Request,
    tenant_id: TenantDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File()],
    top_k: Annotated[int, Form(ge=1, le=100)] = 3,
) -> dict[str, Any]:
    payload = await read_files(files, settings)
    predictor, batch = await run_in_threadpool(_prepare, tenant_id, model_id, payload)
    rows: list[dict[str, Any]] = []
    if batch.pixels is not None:
        probs = await request.app.state.batcher.submit(model_id, batch.pixels, predictor.predict_proba)
        rows = top_k_rows(predictor.labels, probs, top_k)
    return {"model_id": model_id, "predictions": per_file(batch, rows)}


@router.post("/{model_id}/predictions", status_code=202)
def batch_predict(
    model_id: str,
    session: SessionDep,
    tenant_id: TenantDep,
    archive: Annotated[UploadFile, File(description="a zip of images, any folders")],
    top_k: Annotated[int, Form(ge=1, le=100)] = 3,
) -> dict[str, Any]:
    """A batch-prediction job for large sets; results at ``GET .../predictions/{job_id}?format=csv|json``."""
    from workers.batch_predict import plan_batch

    job, key = plan_batch(session, tenant_id, model_id, top_k)
    save_archive(archive, key)
    session.commit()
    enqueue(job.id, job.kind, job.queue)
    return {"job_id": job.id, "status": job.status}


@router.get("/{model_id}/predictions/{job_id}")
def batch_results(
    model_id: str, job_id: str, session: SessionDep, tenant_id: TenantDep, format: Literal["csv", "json"] = "json"
) -> Response:
    from core.jobs import get_job
    from workers.batch_predict import results_key

    model = mdl.get_model(session, tenant_id, model_id)
    job = get_job(session, tenant_id, job_id)
    if job.kind != "predict_batch" or job.resource_id != model_id:
        raise NotFound(f"no batch prediction {job_id!r} for model {model_id!r}")
    if job.status != "succeeded":
        raise Conflict(f"batch prediction {job_id!r} is {job.status}; fetch its results once it has succeeded")
    data = get_storage().get_bytes(results_key(model.storage_prefix, job_id, format))
    media = "text/csv" if format == "csv" else "application/json"
    return Response(data, media_type=media)


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: str
    backbones: list[str] = Field(min_length=1)
    head: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1)
    allow_random_weights: bool = False
    seed: int = 0


compare_router = APIRouter(prefix="/v1/compare", tags=["models"])


@compare_router.post("", status_code=202)
def compare(body: CompareRequest, session: SessionDep, tenant_id: TenantDep) -> dict[str, Any]:
    """A leaderboard of linear probes, one per backbone, in the job's ``metrics.leaderboard``."""
    from workers.compare import plan_compare

    job = plan_compare(
        session,
        tenant_id,
        dataset_id=body.dataset_id,
        backbones=body.backbones,
        head=body.head,
        version=body.version,
        allow_random_weights=body.allow_random_weights,
        seed=body.seed,
    )
    session.commit()
    enqueue(job.id, "compare", job.queue)
    return {"job_id": job.id, "status": job.status}
