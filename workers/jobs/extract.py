"""The extraction job: the pooled features of every image of a dataset version, extracted once per
(images, backbone, weights, preprocessing, layer, engine) and reused by every later request.

Extraction streams over the version in chunks (never all images in memory): canonical copies are decoded
and resized on a thread pool while the engine runs the previous batch; each chunk is written atomically
as ``chunk-NNNNN.npz`` (``features``, ``sha256``), so a worker killed mid-way resumes at the first missing
chunk and the result is identical to an uninterrupted run.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from core import datasets as ds
from core import features as fsets
from core.db import session_scope
from core.errors import NotFound
from core.jobs import JobContext
from core.keys import chunk_key
from core.settings import get_settings
from core.storage import get_storage
from core.tables import FeatureSet
from workers.plan import extractor, resolve_backbone
from workers.runtime.preprocess import load_rgb, stack_batch
from workers.runtime.serving import feature_engine

# --- extraction ---------------------------------------------------------------------------------------------


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
    """Fill a feature set's chunks (skipping those already written) and mark it ready, with every other
    version's row waiting on the same features."""
    settings, storage = get_settings(), get_storage()
    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        if fs is None:
            raise NotFound(f"feature set {fs_id!r} no longer exists")
        fsets.mark_running(s, fs)
        rows = [(img.sha256, img.canonical_key) for img in ds.version_images(s, fs.version_id)]
        prefix, backbone, tenant_id, digest = fs.storage_prefix, fs.backbone, fs.tenant_id, fs.weights_digest
        content_key = fs.cache_key
    spec, _ = resolve_backbone(backbone, True, tenant_id)
    engine = feature_engine(backbone, tenant_id, digest)
    start, forwarded, total = time.perf_counter(), 0, len(rows)
    chunks = [rows[i : i + fsets.CHUNK_SIZE] for i in range(0, total, fsets.CHUNK_SIZE)]

    def decode(batch: list[tuple[str, str]]) -> np.ndarray:
        return stack_batch([load_rgb(storage.get_bytes(ckey), spec.preprocessing) for _, ckey in batch])

    with ThreadPoolExecutor(max_workers=max(1, settings.decode_threads)) as pool:
        for index, chunk in enumerate(chunks):
            key = chunk_key(prefix, index)
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
                    ctx.progress("extract", index * fsets.CHUNK_SIZE + sum(len(f) for f in feats), total)
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
        users = fsets.mark_ready(s, tenant_id, content_key, stats, total)
    if not users:  # its datasets were deleted while it ran: leave no orphan chunks behind
        storage.delete_prefix(prefix)
    return stats


def extract_job(ctx: JobContext) -> dict[str, Any]:
    return extract_features(ctx, ctx.params["feature_set_id"])


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
        planned = fsets.plan_extraction(
            s,
            ctx.tenant_id,
            dataset_id,
            extractor(backbone, allow_random_weights, ctx.tenant_id, queue),
            version=version,
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
