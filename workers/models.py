"""Models: planning a training request, the linear-probe job (features from the cache → a scikit-learn
head → honest test-split metrics), lineage, and the stored head (npz + JSON, never pickle)."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import fields
from importlib.metadata import version as pkg_version
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import datasets as ds
from core.db import get_owned, session_scope
from core.errors import InvalidInput, NotFound
from core.jobs import JobContext, create_job
from core.storage import get_storage
from core.tables import Job, Model
from workers import features as feats

log = logging.getLogger(__name__)

STRATEGIES = ("linear_probe", "finetune")


def model_prefix(tenant_id: str, model_id: str) -> str:
    return f"tenants/{tenant_id}/models/{model_id}"


def head_config(head: dict[str, Any] | None, seed: int = 0) -> Any:
    """Validate the request's ``head`` into a ``HeadConfig`` (a 422 that names the bad field)."""
    from classifiers.heads import HeadConfig

    head = dict(head or {})
    known = {f.name for f in fields(HeadConfig)}
    unknown = sorted(set(head) - known)
    if unknown:
        raise InvalidInput(f"unknown head field(s) {unknown}; known: {sorted(known)}")
    head.setdefault("seed", seed)
    if "C_grid" in head:
        head["C_grid"] = tuple(head["C_grid"])
    try:
        return HeadConfig(**head)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"head: {exc}") from exc


def plan_model(
    session: Session,
    tenant_id: str,
    *,
    dataset_id: str,
    backbone: str,
    strategy: str,
    head: dict[str, Any] | None,
    finetune: dict[str, Any] | None,
    version: int | None,
    allow_random_weights: bool,
    queue: str,
    seed: int,
) -> tuple[Model, Job]:
    if strategy not in STRATEGIES:
        raise InvalidInput(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    dv = ds.ready_version(session, tenant_id, dataset_id, version)
    if strategy == "linear_probe":
        spec, digest = feats.resolve_backbone(backbone, allow_random_weights, tenant_id)
        head_config(head, seed)  # validated now, so a bad request fails at once rather than in the job
        params: dict[str, Any] = {"head": head or {}, "seed": seed, "allow_random_weights": allow_random_weights}
        kind = "fit"
    else:
        from workers.finetune import plan_params

        spec, digest, params = plan_params(backbone, finetune or {}, head or {}, seed, allow_random_weights)
        kind = "finetune"
    model = Model(
        tenant_id=tenant_id,
        dataset_id=dataset_id,
        version_id=dv.id,
        backbone=backbone if backbone.startswith(feats.MODEL_PREFIX) else spec.name,
        strategy=strategy,
        params={**params, "queue": queue},
        storage_prefix="",
        lineage={
            "dataset_id": dataset_id,
            "dataset_version": dv.version,
            "version_id": dv.id,
            "backbone": backbone if backbone.startswith(feats.MODEL_PREFIX) else spec.name,
            "architecture": spec.name,
            "weights_digest": digest,
        },
    )
    session.add(model)
    session.flush()
    model.storage_prefix = model_prefix(tenant_id, model.id)
    job = create_job(
        session,
        tenant_id=tenant_id,
        kind=kind,
        queue=queue,
        resource_type="model",
        resource_id=model.id,
        params={"model_id": model.id},
    )
    model.job_id = job.id
    return model, job


def get_model(session: Session, tenant_id: str, model_id: str) -> Model:
    return get_owned(session, Model, tenant_id, model_id, "model")


def list_models(session: Session, tenant_id: str) -> list[Model]:
    return list(session.scalars(select(Model).where(Model.tenant_id == tenant_id).order_by(Model.created_at)))


def finetuned_backbones(session: Session, tenant_id: str) -> list[dict[str, Any]]:
    """Cards of the tenant's ready fine-tuned models, in ``GET /v1/backbones``'s shape."""
    from workers.backbones import get_backbone

    stmt = select(Model).where(Model.tenant_id == tenant_id, Model.strategy == "finetune", Model.status == "ready")
    cards = []
    for model in session.scalars(stmt.order_by(Model.created_at)):
        spec = get_backbone(model.backbone)
        cards.append(
            {
                "name": f"{feats.MODEL_PREFIX}{model.id}",
                "feature_dim": spec.feature_dim,
                "input_size": spec.preprocessing.input_size,
                "weights": "fine-tuned",
                "license": spec.weights.license,
                "pretrained": True,
                "feature_layer": spec.feature_layer,
                "family": "fine-tuned",
                "base": spec.name,
                "dataset_id": model.dataset_id,
            }
        )
    return cards


def model_to_dict(model: Model) -> dict[str, Any]:
    return {
        "id": model.id,
        "status": model.status,
        "strategy": model.strategy,
        "dataset_id": model.dataset_id,
        "backbone": model.backbone,
        "job_id": model.job_id,
        "labels": model.labels,
        "params": {k: v for k, v in model.params.items() if k != "queue"},
        "lineage": model.lineage,
        "metrics": model.metrics,
        "created_at": model.created_at.isoformat(),
    }


def delete_model(session: Session, tenant_id: str, model_id: str) -> str:
    model = get_model(session, tenant_id, model_id)
    for job in session.scalars(select(Job).where(Job.resource_id == model_id, Job.status.in_(("queued", "running")))):
        job.cancel_requested = True
    session.delete(model)
    return model.storage_prefix


# --- the linear-probe job -----------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    names = ("scikit-learn", "numpy", "onnxruntime", "torch", "torchvision", "timm")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = pkg_version(name)
        except Exception:  # an optional runtime may be absent in the API image
            continue
    return out


def fit_job(ctx: JobContext) -> dict[str, Any]:
    from classifiers.persistence import export_head, save_head

    with session_scope() as s:
        model = get_model(s, ctx.tenant_id, ctx.params["model_id"])
        model.status = "running"
        s.expunge(model)
    try:
        start = time.perf_counter()
        ctx.progress("features", 0, 1, force=True)
        fs, forwarded = feats.ensure_features(
            ctx,
            model.dataset_id,
            model.backbone,
            version=model.lineage["dataset_version"],
            allow_random_weights=bool(model.params.get("allow_random_weights")),
            queue=model.params.get("queue", "cpu"),
        )
        with session_scope() as s:
            data = feats.labelled_features(s, fs, model.version_id)
        ctx.check_cancelled(force=True)
        ctx.progress("fit", 0, 1, force=True)
        cfg = head_config(model.params.get("head"), int(model.params.get("seed", 0)))
        result, metrics = fit_and_score(data, cfg)
        arrays, meta = export_head(result.pipeline)
        storage = get_storage()
        save_head(arrays, meta, lambda name, data: storage.put_bytes(f"{model.storage_prefix}/{name}", data))
        summary = {
            "fit_seconds": round(result.fit_seconds, 3),
            "search_seconds": round(result.search_seconds, 3),
            "cv_scheme": result.cv_scheme,
            "cv_best_score": result.best_score,
            "chosen": result.params,
            "forward_images": forwarded,
            "feature_set_id": fs.id,
            "total_seconds": round(time.perf_counter() - start, 3),
        }
        with session_scope() as s:
            row = s.get(Model, model.id)
            if row is None:
                raise NotFound("the model was deleted while it was being trained")
            row.status, row.metrics, row.labels = "ready", metrics, [str(c) for c in result.pipeline.classes_]
            row.lineage = {
                **row.lineage,
                "feature_set_id": fs.id,
                "engine": fs.engine,
                "head": meta.get("head", {}),
                "params": result.params,
                "libraries": library_versions(),
            }
            row.params = {**row.params, "fit": summary}
        return {"test_accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"), **summary}
    except Exception:
        _mark_model(model.id, "failed")
        raise


def fit_and_score(data: dict[str, np.ndarray], cfg: Any) -> tuple[Any, dict[str, Any]]:
    """Fit a head on the train split (val joins the C search) and report it: test-split metrics at the top
    level, with train (and val) accuracy beside them, so training error and generalisation error are read
    side by side. Shared by the linear-probe and the comparison jobs."""
    from classifiers.metrics import evaluate
    from classifiers.search import fit_head

    X_tr, y_tr = feats.split_arrays(data, "train")
    X_va, y_va = feats.split_arrays(data, "val")
    X_te, y_te = feats.split_arrays(data, "test")
    if len(np.unique(y_tr)) < 2:
        raise InvalidInput("the training split has fewer than two classes: add images or change the split")
    result = fit_head(X_tr, y_tr, cfg, X_val=X_va if len(y_va) else None, y_val=y_va if len(y_va) else None)
    pipeline = result.pipeline
    out: dict[str, Any] = {}
    if len(y_te):
        out.update(evaluate(pipeline, X_te, y_te, sorted(set(data["labels"].tolist()))))
    out["train_accuracy"] = float(np.mean(pipeline.predict(X_tr) == y_tr))
    if len(y_va):
        out["val_accuracy"] = float(np.mean(pipeline.predict(X_va) == y_va))
    out["split_sizes"] = {"train": int(len(y_tr)), "val": int(len(y_va)), "test": int(len(y_te))}
    if not len(y_te):
        out["note"] = "the dataset has no test split: only training accuracy is reported"
    return result, out


def _mark_model(model_id: str, status: str) -> None:
    with session_scope() as s:
        row = s.get(Model, model_id)
        if row is not None and row.status != "ready":
            row.status = status
