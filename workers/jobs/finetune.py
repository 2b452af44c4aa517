"""Scenario 2 as a job: a new head on a registered backbone, some stages unfrozen, trained on the dataset's
train split with early stopping on val, checkpointed every epoch so a redelivered task resumes where the
dead worker stopped, then evaluated on the test split exactly like a linear probe.

LP-FT: by default the head starts as the linear probe of the train split, fitted on the feature cache
(extracted here on a miss, as a linear-probe job would) when the backbone has real weights — the cache's
engine runs the same preprocessing, pooling and eval-mode network as the training graph (checked to 1e-4 by
the export check) — and on the training graph's own features otherwise. The probe's test accuracy is
reported beside the fine-tune's, so a user sees whether fine-tuning paid.

Stored per model: ``finetuned.pt`` (a state dict; loaded with ``weights_only=True``), ``finetuned.json``
(what to build), ``model.onnx`` (the served graph, through the same export check as a backbone's),
``checkpoint.pt`` while training.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from typing import Any

import numpy as np

from classifiers.scores import softmax
from core import datasets as ds
from core.db import session_scope
from core.errors import InvalidInput, JobCancelled, NotFound
from core.jobs import JobContext
from core.settings import get_settings
from core.status import ResourceStatus
from core.storage import get_storage
from core.tables import Job, Model
from workers.backbones import BackboneSpec, WeightsInfo, get_backbone
from workers.jobs.extract import model_features
from workers.jobs.fit import library_versions
from workers.runtime.engines import export_checked

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
EVAL_BATCH = 64  # images per forward pass of the final evaluation


def _samples(rows: list[Any], classes: list[str]) -> Any:
    """The rows as training samples whose images are read from storage only when a batch needs them."""
    from workers.training.data import Samples, StoredImages

    index = {c: i for i, c in enumerate(classes)}
    images = StoredImages([r.canonical_key for r in rows], get_storage().get_bytes)
    return Samples(images, [index[r.label] for r in rows], classes)


def _checkpoint_io(prefix: str) -> tuple[Any, Any]:
    import torch

    storage, key = get_storage(), f"{prefix}/{CHECKPOINT}"

    def save(state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        storage.put_bytes(key, buf.getvalue())  # atomic: a kill mid-write leaves the previous checkpoint

    def load() -> dict[str, Any] | None:
        if not storage.exists(key):
            return None
        return torch.load(io.BytesIO(storage.get_bytes(key)), map_location="cpu", weights_only=True)

    return save, load


def _callbacks(ctx: JobContext, epochs: int, save: Any) -> Any:
    from workers.training.callbacks import Callbacks

    def should_stop() -> bool:
        try:
            ctx.check_cancelled()
        except JobCancelled:
            return True
        return False

    def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
        with session_scope() as s:
            job = s.get(Job, ctx.job_id)
            if job is not None:
                history = [r for r in job.metrics.get("history", []) if r["epoch"] < epoch] + [row]
                job.metrics = {**job.metrics, "history": history, "epochs_done": epoch}
        ctx.progress("epoch", epoch, epochs, force=True, **{k: row.get(k) for k in ("val_loss", "val_acc")})

    return Callbacks(
        on_epoch_end=on_epoch_end,
        should_stop=should_stop,
        save_checkpoint=save,
        on_progress=lambda stage, done, total: ctx.progress(stage, done, total),
    )


def finetune_job(ctx: JobContext) -> dict[str, Any]:
    with session_scope() as s:
        model = s.get(Model, ctx.params["model_id"])
        if model is None:
            raise NotFound("the model was deleted before it was trained")
        model.status = ResourceStatus.RUNNING
        rows = ds.version_images(s, model.version_id, pool=False)
        s.expunge_all()
    from workers.training.config import FinetuneConfig
    from workers.training.loop import finetune

    spec, settings = get_backbone(model.backbone), get_settings()
    cfg = FinetuneConfig.from_dict(model.params["finetune"])
    classes = sorted({r.label for r in rows})
    by_split = {name: [r for r in rows if r.split == name] for name in ("train", "val", "test")}
    if len({r.label for r in by_split["train"]}) < 2:
        raise InvalidInput("the training split has fewer than two classes: add images or change the split")
    save, load = _checkpoint_io(model.storage_prefix)
    resume = load()
    if resume is not None:
        log.info("job %s resumes fine-tuning after epoch %s", ctx.job_id, resume.get("epoch"))
    start = time.perf_counter()
    pretrained = None if model.lineage.get("weights_digest") != "random" else False
    cached = _cached_features(ctx, model, spec, cfg, by_split, classes)
    result = finetune(
        spec,
        _samples(by_split["train"], classes),
        _samples(by_split["val"], classes),
        cfg,
        callbacks=_callbacks(ctx, cfg.epochs, save),
        resume_state=resume,
        pretrained=pretrained,
        probe_features=cached["train"][0] if cached is not None else None,
        probe_val_features=cached["val"][0] if cached is not None else None,
        decode_threads=settings.finetune_decode_threads,
        decoded_cache_bytes=settings.finetune_decoded_cache_mb * 2**20,
    )
    train_seconds = time.perf_counter() - start
    ctx.check_cancelled(force=True)
    ctx.progress("evaluate", 0, 1, force=True)
    digest = _store(model, spec, result, classes)
    metrics = _evaluate(
        _scorer(result.model, model.storage_prefix, cfg, cached, settings.finetune_decode_threads), classes, by_split
    )
    metrics.update(_probe_report(result, cached, classes, cfg.seed))
    summary = {
        "history": result.history,
        "best_epoch": result.best_epoch,
        "epochs_done": len(result.history),
        "stopped_early": result.stopped_early,
        "data_path": result.data_path,
        "train_seconds": round(train_seconds, 2),
        "seconds_per_epoch": round(float(np.mean([r["seconds"] for r in result.history])), 2)
        if result.history
        else None,
        "resumed_from_epoch": int(resume["epoch"]) if resume else None,
        "initial": result.initial,
        "refit_on_val": result.refit_on_val,
        "refit": result.refit,
        "lr": result.lr,
    }
    if result.lr_find is not None:
        summary["lr_find"] = result.lr_find
    with session_scope() as s:
        row = s.get(Model, model.id)
        if row is None:
            raise NotFound("the model was deleted while it was being trained")
        row.status, row.metrics, row.labels = ResourceStatus.READY, metrics, classes
        row.lineage = {**row.lineage, "finetuned_digest": digest, "libraries": library_versions()}
        row.params = {
            **row.params,
            "result": {k: v for k, v in summary.items() if k not in ("history", "lr_find")},
        }
    get_storage().delete(f"{model.storage_prefix}/{CHECKPOINT}")
    return {"test_accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"), **summary}


def _cached_features(
    ctx: JobContext, model: Model, spec: BackboneSpec, cfg: Any, by_split: dict[str, list[Any]], classes: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Per split, (features, label indices) from the feature cache in ``by_split``'s order, for the probe; None
    when the head starts at random or the weights are random (the cache's random weights are not the model's)."""
    if cfg.head_init != "probe" or model.lineage.get("weights_digest") == "random" or spec.weights.kind == "none":
        return None
    fs, _, data = model_features(ctx, model)
    position = {image_id: i for i, image_id in enumerate(data["image_ids"].tolist())}
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, rows in by_split.items():
        at = [position.get(r.id) for r in rows]
        if any(i is None for i in at):
            log.warning("job %s: the feature cache misses %s images; the probe uses the model's", ctx.job_id, split)
            return None
        out[split] = (data["features"][at], np.array([index[r.label] for r in rows], dtype=np.int64))
    return out


def _probe_report(
    result: Any, cached: dict[str, tuple[np.ndarray, np.ndarray]] | None, classes: list[str], seed: int
) -> dict[str, Any]:
    """The test accuracy of the probe the kept head started from — of train + val when the model was refitted
    on them, as a linear probe is — on the same test split (fitted again when the run resumed from a
    checkpoint and no longer holds it)."""
    from workers.training.probe import fit_probe

    if cached is None or not len(cached["test"][1]):
        return {}
    probe = result.probe
    if probe is None:
        splits = ("train", "val") if result.refit_on_val else ("train",)
        X_fit = np.concatenate([cached[s][0] for s in splits])
        y_fit = np.concatenate([cached[s][1] for s in splits])
        probe = fit_probe(X_fit, y_fit, classes, seed=seed)
    X, y = cached["test"]
    pred = (X.astype(np.float64) @ probe.weight.T + probe.bias).argmax(axis=1)
    accuracy = float(np.mean(pred == y))
    return {"probe_accuracy": accuracy, "probe_C": probe.C}


EVAL_BATCH = 64


def _scorer(
    net: Any, prefix: str, cfg: Any, cached: dict[str, tuple[np.ndarray, np.ndarray]] | None, threads: int
) -> Any:
    """What scores a split's rows: ``(split, rows) -> probabilities``.

    A head-only fine-tune leaves the trunk as it was (frozen, BatchNorm in eval mode), so its logits are the
    new head on the cached features (the same eval-mode network, checked to 1e-4 at export): no forward pass.
    Any other policy is scored by the graph it will be served with (``model.onnx`` through ONNX Runtime, or
    eager torch when the export check failed), a batch at a time, decoding ahead on ``threads`` threads."""
    import torch
    from torch import nn

    from workers.runtime.serving import FinetunedEngine

    head = net.classifier
    if cfg.policy.kind == "head" and cfg.resolved_bn_eval() and cached is not None and isinstance(head, nn.Linear):

        def from_features(split: str, rows: list[Any]) -> np.ndarray:
            with torch.no_grad():
                logits = head.eval()(torch.from_numpy(np.ascontiguousarray(cached[split][0], np.float32)))
            return softmax(logits.numpy())

        return from_features
    from workers.training.data import DecodedImages, StoredImages, in_order, prefetch

    engine = FinetunedEngine(prefix)

    def from_images(split: str, rows: list[Any]) -> np.ndarray:
        stored = StoredImages([r.canonical_key for r in rows], get_storage().get_bytes)
        images = DecodedImages(stored, engine.spec.preprocessing, 0)
        batches = prefetch(in_order(len(rows), EVAL_BATCH), images, threads=threads)
        return np.concatenate(
            [engine.predict_proba(np.ascontiguousarray(b.permute(0, 2, 3, 1).numpy())) for _, b in batches]
        )

    return from_images


def _evaluate(score: Any, classes: list[str], by_split: dict[str, list[Any]]) -> dict[str, Any]:
    """The same report as a linear probe's: test-split metrics, with train and val accuracy beside them."""
    from classifiers.metrics import classification_metrics

    out: dict[str, Any] = {}
    names = np.array(classes)
    for split in ("train", "val", "test"):
        rows = by_split[split]
        if not rows:
            continue
        pred = names[score(split, rows).argmax(axis=1)]
        truth = np.array([r.label for r in rows])
        if split == "test":
            out.update(classification_metrics(truth, pred, classes))
        else:
            out[f"{split}_accuracy"] = float(np.mean(pred == truth))
    out["split_sizes"] = {k: len(v) for k, v in by_split.items()}
    return out


def _store(model: Model, spec: BackboneSpec, result: Any, classes: list[str]) -> str:
    """Weights (state dict), what to rebuild them into, and the ONNX graph served on CPU."""
    import torch

    storage = get_storage()
    buf = io.BytesIO()
    torch.save(result.state_dict, buf)
    weights = buf.getvalue()
    digest = hashlib.sha256(weights).hexdigest()
    storage.put_bytes(f"{model.storage_prefix}/finetuned.pt", weights)
    meta = {
        "backbone": spec.name,
        "classes": classes,
        "dropout": model.params["finetune"]["dropout"],
        "init": model.params["finetune"]["init"],
        "digest": digest,
    }
    graph = export_checked(result.model, spec, WeightsInfo(True, digest, None))
    if graph is not None:
        storage.put_bytes(f"{model.storage_prefix}/model.onnx", graph)
        meta["onnx"] = "model.onnx"
    storage.put_bytes(f"{model.storage_prefix}/finetuned.json", json.dumps(meta).encode())
    return digest
