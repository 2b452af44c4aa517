"""The linear-probe job: features from the cache (extracted here on a miss) → a scikit-learn head →
honest test-split metrics, lineage, and the stored head (npz + JSON, never pickle)."""

from __future__ import annotations

import platform
import time
from importlib.metadata import version as pkg_version
from typing import Any

import numpy as np

from classifiers.metrics import evaluate
from classifiers.persistence import export_head, save_head
from classifiers.search import fit_head
from core import features as fsets
from core import models as mdl
from core.db import session_scope
from core.errors import InvalidInput, NotFound
from core.jobs import JobContext
from core.status import ResourceStatus
from core.storage import get_storage
from core.tables import Model
from workers.jobs.extract import model_features
from workers.plan import head_config


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
    with session_scope() as s:
        model = mdl.get_model(s, ctx.tenant_id, ctx.params["model_id"])
        model.status = ResourceStatus.RUNNING
        s.expunge(model)
    start = time.perf_counter()
    fs, forwarded, data = model_features(ctx, model)
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
        row.status, row.metrics, row.labels = ResourceStatus.READY, metrics, [str(c) for c in result.pipeline.classes_]
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


def fit_and_score(data: dict[str, np.ndarray], cfg: Any) -> tuple[Any, dict[str, Any]]:
    """Fit a head on the train split (val joins the C search) and report it: test-split metrics at the top
    level, with train (and val) accuracy beside them, so training error and generalisation error are read
    side by side. Shared by the linear-probe and the comparison jobs."""
    X_tr, y_tr = fsets.split_arrays(data, "train")
    X_va, y_va = fsets.split_arrays(data, "val")
    X_te, y_te = fsets.split_arrays(data, "test")
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
