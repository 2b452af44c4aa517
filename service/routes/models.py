"""/v1/models: train (linear probe or fine-tune) as a job, inspect, delete, and predict; /v1/compare."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from core import models as mdl
from core.settings import Settings
from core.storage import get_storage
from service.deps import PredictTenantDep, SessionDep, SettingsDep, TenantDep
from service.pagination import PageDep, set_link_header
from service.schemas import CompareRequest, Created, JobRef, ModelOut, ModelRequest, PredictOut, SuggestionsOut
from service.uploads import read_files, save_archive
from workers import plan
from workers.dispatch import submit
from workers.runtime import suggestions
from workers.runtime.export import model_graph
from workers.runtime.inference import decode_files, per_file
from workers.runtime.serving import PREDICTORS, TTA, augment, check_tta, merge, top_k_rows

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.post("", status_code=202, response_model=Created)
def create_model(body: ModelRequest, session: SessionDep, tenant_id: TenantDep) -> Created:
    spec, digest, params = plan.training_params(
        body.strategy,
        body.backbone,
        head=body.head.fields(),
        finetune=body.finetune.fields(),
        seed=body.seed,
        allow_random_weights=body.allow_random_weights,
        tenant_id=tenant_id,
    )
    model, job = mdl.create_model(
        session,
        tenant_id,
        dataset_id=body.dataset_id,
        version=body.version,
        backbone=body.backbone,
        architecture=spec.name,
        weights_digest=digest,
        strategy=body.strategy,
        params=params,
        queue=body.queue,
    )
    submit(session, job)
    return Created(id=model.id, job_id=job.id, status=model.status)


@router.get("", response_model=list[ModelOut])
def list_models(
    request: Request, response: Response, session: SessionDep, tenant_id: TenantDep, page: PageDep
) -> list[ModelOut]:
    """One page of models, oldest first; the next page's URL is in the ``Link`` header. Models of over 100
    classes come without their confusion matrix and per-class table (see ``omitted``)."""
    result = mdl.list_models(session, tenant_id, page.limit, page.cursor)
    set_link_header(request, response, result.next_cursor)
    return [ModelOut.summary(m) for m in result.items]


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: str, session: SessionDep, tenant_id: TenantDep) -> ModelOut:
    return ModelOut.from_row(mdl.get_model(session, tenant_id, model_id))


@router.delete("/{model_id}", status_code=204)
def delete_model(model_id: str, session: SessionDep, tenant_id: TenantDep) -> None:
    prefix = mdl.delete_model(session, tenant_id, model_id)
    session.commit()
    PREDICTORS.forget(model_id)
    get_storage().delete_prefix(prefix)


@router.get("/{model_id}/suggestions", response_model=SuggestionsOut)
def suggest(
    model_id: str,
    tenant_id: TenantDep,
    strategy: Literal["margin", "entropy", "coreset"] = "margin",
    k: Annotated[int, Query(ge=1, le=suggestions.MAX_K)] = 20,
) -> dict[str, Any]:
    """The unlabelled images of a linear probe's dataset version to label first: ``margin`` (top-1 minus top-2
    probability, smallest first), ``entropy`` (largest first) or ``coreset`` (k-center greedy on the cached
    features, away from the labelled training images). Label them with ``POST /v1/datasets/{id}/labels``."""
    return suggestions.suggest(tenant_id, model_id, strategy, k)


@router.get(
    "/{model_id}/export",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the model as one ONNX graph"}},
)
def export_model(model_id: str, tenant_id: TenantDep, format: Literal["onnx"] = "onnx") -> Response:
    """The model as one self-contained ONNX graph: uint8 images in, class probabilities out; the class names,
    the preprocessing and the lineage are in its metadata (see ``workers/runtime/export.py``)."""
    data = model_graph(tenant_id, model_id)
    headers = {"Content-Disposition": f'attachment; filename="{model_id}.onnx"'}
    return Response(data, media_type="application/octet-stream", headers=headers)


def _prepare(tenant_id: str, model_id: str, payload: list[tuple[str, bytes]], tta: list[str]) -> tuple[Any, Any, Any]:
    predictor = PREDICTORS.get(tenant_id, model_id)
    batch = decode_files(payload, predictor.spec)
    return predictor, batch, augment(batch.pixels, tta) if batch.pixels is not None else None


def _decode_and_predict(predictor: Any, payload: list[tuple[str, bytes]], tta: list[str]) -> tuple[Any, Any]:
    batch = decode_files(payload, predictor.spec)
    return batch, predictor.predict_proba(augment(batch.pixels, tta)) if batch.pixels is not None else None


TTA_DESCRIPTION = (
    f"test-time augmentation, repeatable ({', '.join(TTA)}): each image's preprocessed pixels are also run "
    "flipped, in the same batch, and the probabilities averaged"
)
TTAForm = Annotated[list[str] | None, Form(description=TTA_DESCRIPTION)]


async def predict_files(
    request: Request,
    tenant_id: str,
    model_id: str,
    files: list[UploadFile],
    top_k: int,
    settings: Settings,
    tta: list[str] | None = None,
) -> dict[str, Any]:
    """The predictions of one model for uploaded files: the body of ``POST .../predict``, by id or alias.
    With ``tta`` the variants are extra rows of the request's forward pass (the computation of
    ``inference.predict_images``). A model with nothing queued or running takes the request at once, decoding
    included, on its inference thread; a busy one gets it decoded in the thread pool, to batch with the rest."""
    augmentations = check_tta(tta or [])
    payload = await read_files(files, settings)
    batcher = request.app.state.batcher
    predictor = PREDICTORS.fresh(tenant_id, model_id)
    if predictor is not None and batcher.idle(model_id):
        # Nothing to merge with: decode and forward pass in one trip to the inference thread.
        job = partial(_decode_and_predict, predictor, payload, augmentations)
        batch, probs = await batcher.run_alone(model_id, job)
    else:  # the lookup (a query, a build) and the decoding in the thread pool, while the model is busy
        predictor, batch, pixels = await run_in_threadpool(_prepare, tenant_id, model_id, payload, augmentations)
        probs = None if pixels is None else await batcher.submit(model_id, pixels, predictor.predict_proba)
    rows = [] if probs is None else top_k_rows(predictor.labels, merge(probs, augmentations), top_k)
    return {"model_id": model_id, "predictions": per_file(batch, rows), "tta": augmentations or None}


@router.post("/{model_id}/predict", response_model=PredictOut, response_model_exclude_none=True)
async def predict(
    model_id: str,
    request: Request,
    tenant_id: PredictTenantDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File()],
    top_k: Annotated[int, Form(ge=1, le=100)] = 3,
    tta: TTAForm = None,
) -> dict[str, Any]:
    return await predict_files(request, tenant_id, model_id, files, top_k, settings, tta)


@router.post("/{model_id}/predictions", status_code=202, response_model=JobRef)
def batch_predict(
    model_id: str,
    session: SessionDep,
    tenant_id: TenantDep,
    archive: Annotated[UploadFile, File(description="a zip of images, any folders")],
    top_k: Annotated[int, Form(ge=1, le=100)] = 3,
    tta: TTAForm = None,
) -> JobRef:
    """A batch-prediction job for large sets; results at ``GET .../predictions/{job_id}?format=csv|json``."""
    job, key = mdl.create_batch_prediction(session, tenant_id, model_id, top_k, check_tta(tta or []))
    save_archive(archive, key)
    submit(session, job)
    return JobRef(job_id=job.id, status=job.status)


@router.get(
    "/{model_id}/predictions/{job_id}",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}, "application/json": {}}}},
)
def batch_results(
    model_id: str, job_id: str, session: SessionDep, tenant_id: TenantDep, format: Literal["csv", "json"] = "json"
) -> Response:
    data = get_storage().get_bytes(mdl.batch_results_key(session, tenant_id, model_id, job_id, format))
    return Response(data, media_type="text/csv" if format == "csv" else "application/json")


compare_router = APIRouter(prefix="/v1/compare", tags=["models"])


@compare_router.post("", status_code=202, response_model=JobRef)
def compare(body: CompareRequest, session: SessionDep, tenant_id: TenantDep) -> JobRef:
    """A leaderboard of linear probes, one per backbone, in the job's ``metrics.leaderboard``."""
    names = list(dict.fromkeys(body.backbones))
    for name in names:
        plan.resolve_backbone(name, body.allow_random_weights, tenant_id)
    head = body.head.fields()
    plan.head_config(head, body.seed)
    params = {"backbones": names, "head": head, "allow_random_weights": body.allow_random_weights, "seed": body.seed}
    job = mdl.create_comparison(session, tenant_id, dataset_id=body.dataset_id, version=body.version, params=params)
    submit(session, job)
    return JobRef(job_id=job.id, status=job.status)
