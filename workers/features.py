"""Scenario 3, cached: the pooled features of every image of a dataset version, extracted once per
(images, backbone, weights, preprocessing, layer, engine) and reused by every later request.

Extraction streams over the version in chunks (never all images in memory): canonical copies are decoded
and resized on a thread pool while the engine runs the previous batch; each chunk is written atomically
as ``chunk-NNNNN.npz`` (``features``, ``sha256``), so a worker killed mid-way resumes at the first missing
chunk and the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version as pkg_version
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import datasets as ds
from core.db import get_owned, session_scope
from core.errors import InvalidInput, NotFound
from core.jobs import JobContext, create_job
from core.settings import get_settings
from core.storage import get_storage
from core.tables import FeatureSet, Image, Job
from workers.backbones import BackboneSpec, get_backbone, weights_info

log = logging.getLogger(__name__)

CHUNK_SIZE = 512  # images per stored chunk: bounded memory, fine-grained resume
FORMAT_VERSION = 1


def engine_tag(queue: str) -> str:
    """The engine a queue's workers run (cpu: ONNX Runtime; gpu: torch on CUDA), for cache keys."""
    from workers.engine import ENGINE_VERSION

    if queue == "gpu":
        return f"torch-{pkg_version('torch')}-cuda-x{ENGINE_VERSION}"
    return f"onnxruntime-{pkg_version('onnxruntime')}-x{ENGINE_VERSION}"


def cache_key(hashes: list[str], spec: BackboneSpec, weights_digest: str, engine: str) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "images": hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest(),
        "backbone": spec.name,
        "weights": weights_digest,
        "preprocessing": spec.preprocessing.key(),
        "layer": spec.feature_layer,
        "engine": engine,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def features_prefix(tenant_id: str, key: str) -> str:
    return f"tenants/{tenant_id}/features/{key}"


MODEL_PREFIX = "model:"  # a tenant's fine-tuned model used as a backbone: "model:<model id>"


def resolve_backbone(name: str, allow_random_weights: bool, tenant_id: str | None = None) -> tuple[BackboneSpec, str]:
    """The spec and weights digest to extract with; refuses random weights unless explicitly allowed.
    ``model:<id>`` names a fine-tuned model of the tenant: its pooled pre-logits are the features."""
    if name.startswith(MODEL_PREFIX):
        return _finetuned_backbone(name.removeprefix(MODEL_PREFIX), tenant_id)
    try:
        spec = get_backbone(name)
    except NotFound as exc:
        raise InvalidInput(f"{exc.message}; or {MODEL_PREFIX}<id> of a fine-tuned model") from exc
    info = weights_info(spec)
    if not info.pretrained and not allow_random_weights:
        where = f" (put {spec.weights.filename} in TLSERVE_WEIGHTS_DIR)" if spec.weights.filename else ""
        raise InvalidInput(
            f"backbone {name!r} has no pretrained weights here{where}; features of random weights are rarely "
            'useful: pass "allow_random_weights": true to extract them anyway'
        )
    return spec, info.digest


def _finetuned_backbone(model_id: str, tenant_id: str | None) -> tuple[BackboneSpec, str]:
    from core.tables import Model

    with session_scope() as s:
        model = s.get(Model, model_id)
        if model is None or tenant_id is None or model.tenant_id != tenant_id:
            raise InvalidInput(f"backbone {MODEL_PREFIX}{model_id}: no such model")
        if model.strategy != "finetune" or model.status != "ready":
            raise InvalidInput(
                f"backbone {MODEL_PREFIX}{model_id}: only a fine-tuned model that is ready can serve as a backbone"
            )
        return get_backbone(model.backbone), model.lineage["finetuned_digest"]


def feature_engine(backbone: str, tenant_id: str, weights_digest: str) -> Any:
    """What computes features for a backbone name: the shared engine of a registered backbone, or the
    fine-tuned network of ``model:<id>`` (from the same bounded cache that serves its predictions)."""
    if backbone.startswith(MODEL_PREFIX):
        from workers.predict import PREDICTORS

        return PREDICTORS.get(tenant_id, backbone.removeprefix(MODEL_PREFIX)).finetuned
    from workers.engine import get_engine

    return get_engine(backbone, pretrained=False if weights_digest == "random" else None)


@dataclass
class Planned:
    feature_set: FeatureSet
    job: Job | None  # None: ready in the cache, or already being extracted by another job
    cached: bool


def plan_extraction(
    session: Session,
    tenant_id: str,
    dataset_id: str,
    backbone: str,
    *,
    version: int | None = None,
    allow_random_weights: bool = False,
    queue: str = "cpu",
) -> Planned:
    """Find the feature set in the cache or create it with an extraction job (the caller enqueues)."""
    dv = ds.ready_version(session, tenant_id, dataset_id, version)
    spec, digest = resolve_backbone(backbone, allow_random_weights, tenant_id)
    hashes = list(session.scalars(select(Image.sha256).where(Image.version_id == dv.id)))
    engine = engine_tag(queue)
    key = cache_key(hashes, spec, digest, engine)
    found = session.scalar(select(FeatureSet).where(FeatureSet.tenant_id == tenant_id, FeatureSet.cache_key == key))
    if found is not None and found.status in ("ready", "queued", "running"):
        return Planned(found, None, cached=found.status == "ready")
    if found is None:
        found = FeatureSet(
            tenant_id=tenant_id,
            cache_key=key,
            dataset_id=dataset_id,
            version_id=dv.id,
            backbone=spec.name,
            weights_digest=digest,
            engine=engine,
            storage_prefix=features_prefix(tenant_id, key),
            feature_dim=spec.feature_dim,
            num_images=len(hashes),
        )
        try:
            with session.begin_nested():
                session.add(found)
        except IntegrityError:  # a concurrent request created it first
            found = session.scalar(
                select(FeatureSet).where(FeatureSet.tenant_id == tenant_id, FeatureSet.cache_key == key)
            )
            return Planned(found, None, cached=found.status == "ready")
    job = create_job(
        session,
        tenant_id=tenant_id,
        kind="extract",
        queue=queue,
        resource_type="features",
        resource_id=found.id,
        params={"feature_set_id": found.id},
    )
    found.status, found.job_id = "queued", job.id
    return Planned(found, job, cached=False)


def get_feature_set(session: Session, tenant_id: str, feature_set_id: str) -> FeatureSet:
    return get_owned(session, FeatureSet, tenant_id, feature_set_id, "feature set")


def feature_set_to_dict(fs: FeatureSet) -> dict[str, Any]:
    return {
        "id": fs.id,
        "status": fs.status,
        "dataset_id": fs.dataset_id,
        "version_id": fs.version_id,
        "backbone": fs.backbone,
        "weights_digest": fs.weights_digest,
        "engine": fs.engine,
        "num_images": fs.num_images,
        "feature_dim": fs.feature_dim,
        "job_id": fs.job_id,
        "cache_key": fs.cache_key,
        "stats": fs.stats,
        "created_at": fs.created_at.isoformat(),
    }


# --- extraction ---------------------------------------------------------------------------------------------


def _chunk_key(prefix: str, index: int) -> str:
    return f"{prefix}/chunk-{index:05d}.npz"


def _chunk_ok(storage: Any, key: str, hashes: list[str]) -> bool:
    """A chunk written by an earlier attempt is reused only when it holds exactly these images."""
    if not storage.exists(key):
        return False
    try:
        with np.load(io.BytesIO(storage.get_bytes(key)), allow_pickle=False) as z:
            return list(z["sha256"]) == hashes
    except (OSError, ValueError, KeyError):
        return False


def _batches(items: list[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def extract_features(ctx: JobContext | None, fs_id: str) -> dict[str, Any]:
    """Fill a feature set's chunks (skipping those already written) and mark it ready."""
    from workers.preprocess import load_rgb, stack_batch

    settings, storage = get_settings(), get_storage()
    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        if fs is None:
            raise NotFound(f"feature set {fs_id!r} no longer exists")
        fs.status = "running"
        rows = [(img.sha256, img.canonical_key) for img in ds.version_images(s, fs.version_id)]
        prefix, backbone, tenant_id, digest = fs.storage_prefix, fs.backbone, fs.tenant_id, fs.weights_digest
    spec, _ = resolve_backbone(backbone, True, tenant_id)
    engine = feature_engine(backbone, tenant_id, digest)
    start, forwarded, total = time.perf_counter(), 0, len(rows)
    chunks = [rows[i : i + CHUNK_SIZE] for i in range(0, total, CHUNK_SIZE)]

    def decode(batch: list[tuple[str, str]]) -> np.ndarray:
        return stack_batch([load_rgb(storage.get_bytes(ckey), spec.preprocessing) for _, ckey in batch])

    with ThreadPoolExecutor(max_workers=max(1, settings.decode_threads)) as pool:
        for index, chunk in enumerate(chunks):
            key = _chunk_key(prefix, index)
            hashes = [h for h, _ in chunk]
            if _chunk_ok(storage, key, hashes):
                continue
            batches = list(_batches(chunk, settings.batch_size))
            feats: list[np.ndarray] = []
            pending = pool.submit(decode, batches[0])
            for b, _batch in enumerate(batches):
                pixels = pending.result()
                if b + 1 < len(batches):
                    pending = pool.submit(decode, batches[b + 1])  # decode the next batch during the forward
                if ctx is not None:
                    ctx.check_cancelled()
                feats.append(engine.features(pixels).astype(np.float32, copy=False))
                forwarded += len(pixels)
                if ctx is not None:
                    ctx.progress("extract", index * CHUNK_SIZE + sum(len(f) for f in feats), total)
            buf = io.BytesIO()
            np.savez(buf, features=np.concatenate(feats), sha256=np.array(hashes))
            storage.put_bytes(key, buf.getvalue())
    seconds = time.perf_counter() - start
    stats = {
        "seconds": round(seconds, 3),
        "forward_images": forwarded,
        "chunks": len(chunks),
        "images_per_s": round(forwarded / seconds, 1) if forwarded and seconds > 0 else None,
        "engine_used": getattr(engine, "key", type(engine).__name__),
    }
    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        if fs is not None:
            fs.status, fs.stats, fs.num_images = "ready", stats, total
    return stats


def extract_job(ctx: JobContext) -> dict[str, Any]:
    fs_id = ctx.params["feature_set_id"]
    try:
        return extract_features(ctx, fs_id)
    except Exception:
        with session_scope() as s:
            fs = s.get(FeatureSet, fs_id)
            if fs is not None and fs.status != "ready":
                fs.status = "failed"
        raise


def load_features(fs: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """(features N×D float32, sha256 N) in the stored order."""
    storage = get_storage()
    feats, hashes = [], []
    for index in range((fs.num_images + CHUNK_SIZE - 1) // CHUNK_SIZE):
        with np.load(io.BytesIO(storage.get_bytes(_chunk_key(fs.storage_prefix, index))), allow_pickle=False) as z:
            feats.append(z["features"])
            hashes.append(z["sha256"])
    if not feats:
        return np.zeros((0, fs.feature_dim), np.float32), np.array([], dtype="<U64")
    return np.concatenate(feats), np.concatenate(hashes)


def labelled_features(session: Session, fs: FeatureSet, version_id: str | None = None) -> dict[str, Any]:
    """Features joined with a version's labels, ids and splits (the version defaults to the feature set's)."""
    feats, hashes = load_features(fs)
    rows = {img.sha256: img for img in ds.version_images(session, version_id or fs.version_id)}
    keep = np.array([h in rows for h in hashes], dtype=bool)
    feats, hashes = feats[keep], hashes[keep]
    return {
        "features": feats,
        "sha256": hashes,
        "labels": np.array([rows[h].label for h in hashes]),
        "image_ids": np.array([rows[h].id for h in hashes]),
        "splits": np.array([rows[h].split for h in hashes]),
    }


def npz_bytes(data: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **data)
    return buf.getvalue()


def download_npz(session: Session, tenant_id: str, feature_set_id: str) -> bytes:
    """``features``, ``labels``, ``image_ids`` (and ``splits``, ``sha256``) as an npz without pickles."""
    from core.errors import Conflict

    fs = get_feature_set(session, tenant_id, feature_set_id)
    if fs.status != "ready":
        raise Conflict(f"feature set {feature_set_id!r} is {fs.status}; download it when its job has succeeded")
    return npz_bytes(labelled_features(session, fs))


def ensure_features(
    ctx: JobContext,
    dataset_id: str,
    backbone: str,
    *,
    version: int | None,
    allow_random_weights: bool,
    queue: str = "cpu",
) -> tuple[FeatureSet, int]:
    """Features for a job that needs them (a fit, a comparison): from the cache when they are there,
    else extracted inside that job rather than by a second one. Returns the feature set (detached) and
    how many images this call ran through the backbone (zero on a cache hit)."""
    with session_scope() as s:
        planned = plan_extraction(
            s,
            ctx.tenant_id,
            dataset_id,
            backbone,
            version=version,
            allow_random_weights=allow_random_weights,
            queue=queue,
        )
        if planned.job is not None:
            s.delete(planned.job)
            planned.feature_set.job_id = ctx.job_id
        fs_id, ready = planned.feature_set.id, planned.cached
    forwarded = 0 if ready else extract_features(ctx, fs_id)["forward_images"]
    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        s.expunge(fs)
    return fs, forwarded


def split_arrays(data: dict[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of one split of ``labelled_features``' output."""
    mask = data["splits"] == split
    return data["features"][mask], data["labels"][mask]
