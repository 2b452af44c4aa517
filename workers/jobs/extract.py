"""The extraction job: the pooled features of every image of a dataset version, extracted once per
(images, backbone, weights, preprocessing, layer, engine) and reused by every later request.

Extraction streams over the version in chunks (never all images in memory): canonical copies are decoded
and resized on a thread pool while the engine runs the previous batch; each chunk is written atomically
as ``chunk-NNNNN.npz`` (``features``, ``sha256``), so a worker killed mid-way resumes at the first missing
chunk and the result is identical to an uninterrupted run.

A large extraction (more than ``TLSERVE_EXTRACT_SHARD_IMAGES``) is split into shards: runs of chunks, each
an ``extract_shard`` job of its own (a row, a lease, a message), so that every free worker takes one. The
extraction job itself only plans the shards and waits for them without holding a worker: it gives itself
back to the queue until every chunk has landed, then checks them and publishes the feature set. A killed
shard is recovered by the reaper like any job and re-runs alone, reusing the chunks it had written; the last
shard to land sends the extraction job again at once.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sqlalchemy import select

from core import datasets as ds
from core import features as fsets
from core.db import session_scope
from core.errors import JobCancelled, JobReleased, NotFound, TLServeError
from core.jobs import JobContext, create_job
from core.keys import chunk_key
from core.settings import get_settings
from core.status import JobKind, JobStatus, ResourceStatus, ResourceType
from core.storage import get_storage
from core.tables import FeatureSet, Job, Model
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


SHARD_CHECK_S = 1.0  # how often a shard looks whether its extraction is still wanted


def _building(status: str) -> bool:
    return status in (ResourceStatus.QUEUED, ResourceStatus.RUNNING)


def _check_still_building(fs_id: str) -> None:
    """A shard stops when its feature set is no longer being built (its extraction was cancelled or failed)."""
    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        if fs is None or not _building(fs.status):
            raise JobCancelled("the extraction this shard belongs to has ended")


def extract_features(
    ctx: JobContext | None, fs_id: str, chunk_range: range | None = None, *, publish: bool = True
) -> dict[str, Any]:
    """Fill a feature set's chunks (those of ``chunk_range``, default all; skipping those already written)
    and, when ``publish``, mark it ready, with every other version's row waiting on the same features. A
    shard (``publish=False``) never revives an ended feature set."""
    settings, storage = get_settings(), get_storage()
    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        if fs is None:
            raise NotFound(f"feature set {fs_id!r} no longer exists")
        if publish:
            fsets.mark_running(s, fs)
        elif not _building(fs.status):
            raise JobCancelled("the extraction this shard belongs to has ended")
        rows = [(img.sha256, img.canonical_key) for img in ds.version_images(s, fs.version_id)]
        prefix, backbone, tenant_id, digest = fs.storage_prefix, fs.backbone, fs.tenant_id, fs.weights_digest
        content_key = fs.cache_key
    spec, _ = resolve_backbone(backbone, True, tenant_id)
    engine = feature_engine(backbone, tenant_id, digest)
    start, forwarded, total = time.perf_counter(), 0, len(rows)
    chunks = [rows[i : i + fsets.CHUNK_SIZE] for i in range(0, total, fsets.CHUNK_SIZE)]
    indices = chunk_range if chunk_range is not None else range(len(chunks))
    first = indices.start if len(indices) else 0
    mine = sum(len(chunks[i]) for i in indices)
    last_check = time.monotonic()

    def decode(batch: list[tuple[str, str]]) -> np.ndarray:
        return stack_batch([load_rgb(storage.get_bytes(ckey), spec.preprocessing) for _, ckey in batch])

    with ThreadPoolExecutor(max_workers=max(1, settings.decode_threads)) as pool:
        for index in indices:
            chunk = chunks[index]
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
                if not publish and time.monotonic() - last_check >= SHARD_CHECK_S:
                    _check_still_building(fs_id)  # a shard stops within a batch when its extraction ended
                    last_check = time.monotonic()
                feats.append(engine.features(pixels).astype(np.float32, copy=False))
                forwarded += len(pixels)
                if ctx is not None:
                    done = (index - first) * fsets.CHUNK_SIZE + sum(len(f) for f in feats)
                    ctx.progress("extract", done, mine)
            buf = io.BytesIO()
            np.savez(buf, features=np.concatenate(feats), sha256=np.array(hashes))
            storage.put_bytes(key, buf.getvalue())
    seconds = time.perf_counter() - start
    stats = {
        "seconds": round(seconds, 3),
        "forward_images": forwarded,
        "chunks": len(indices),
        "images_per_s": round(forwarded / seconds, 1) if forwarded and seconds > 0 else None,
        "engine_used": getattr(engine, "key", type(engine).__name__),
    }
    if not publish:
        return stats
    with session_scope() as s:
        users = fsets.mark_ready(s, tenant_id, content_key, stats, total)
    if not users:  # its datasets were deleted while it ran: leave no orphan chunks behind
        storage.delete_prefix(prefix)
    return stats


def extract_job(ctx: JobContext) -> dict[str, Any]:
    fs_id = ctx.params["feature_set_id"]
    shard_chunks = _shard_chunks()
    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        if fs is None:
            raise NotFound(f"feature set {fs_id!r} no longer exists")
        total = len(ds.version_images(s, fs.version_id))
    if not shard_chunks or fsets.num_chunks(total) <= shard_chunks:
        return extract_features(ctx, fs_id)
    return _sharded(ctx, fs_id, total, shard_chunks)


# --- shards -------------------------------------------------------------------------------------------------


def _shard_chunks() -> int:
    """Chunks per shard (0: extractions are never split)."""
    images = get_settings().extract_shard_images
    return 0 if images <= 0 else max(1, round(images / fsets.CHUNK_SIZE))


def _plan_shards(ctx: JobContext, fs_id: str, n_chunks: int, per_shard: int) -> list[str]:
    """The shard jobs of this extraction, created once (their ids kept in the job's metrics) and sent."""
    from workers.dispatch import send_quietly

    with session_scope() as s:
        job = s.scalar(select(Job).where(Job.id == ctx.job_id).with_for_update())
        if job is None:
            raise NotFound(f"job {ctx.job_id!r} no longer exists")
        shard_ids = list((job.metrics or {}).get("shards", []))
        if shard_ids:
            return shard_ids
        for first in range(0, n_chunks, per_shard):
            shard = create_job(
                s,
                tenant_id=ctx.tenant_id,
                kind=JobKind.EXTRACT_SHARD,
                queue=ctx.queue,
                resource_type=ResourceType.FEATURES,
                resource_id=fs_id,
                params={
                    "feature_set_id": fs_id,
                    "parent_job_id": ctx.job_id,
                    "first_chunk": first,
                    "stop_chunk": min(n_chunks, first + per_shard),
                },
            )
            shard_ids.append(shard.id)
        job.metrics = {**(job.metrics or {}), "shards": shard_ids}
    for shard_id in shard_ids:  # committed first: a send that fails is the reaper's to redo (the outbox)
        send_quietly(shard_id, JobKind.EXTRACT_SHARD, ctx.queue)
    return shard_ids


def _landed(storage: Any, prefix: str, n_chunks: int) -> int:
    return sum(storage.exists(chunk_key(prefix, i)) for i in range(n_chunks))


def _sharded(ctx: JobContext, fs_id: str, total: int, per_shard: int) -> dict[str, Any]:
    """Plan the shards, then publish when every chunk has landed, else give the job back to the queue."""
    storage, n_chunks = get_storage(), fsets.num_chunks(total)
    shard_ids = _plan_shards(ctx, fs_id, n_chunks, per_shard)
    ctx.check_cancelled(force=True)
    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        if fs is None:
            raise NotFound(f"feature set {fs_id!r} no longer exists")
        fsets.mark_running(s, fs)
        prefix, content_key, tenant_id = fs.storage_prefix, fs.cache_key, fs.tenant_id
        rows = [img.sha256 for img in ds.version_images(s, fs.version_id)]
        shards = list(s.execute(select(Job.id, Job.status, Job.error, Job.metrics).where(Job.id.in_(shard_ids))))
    landed = _landed(storage, prefix, n_chunks)
    if landed < n_chunks:
        broken = [r for r in shards if r.status in (JobStatus.FAILED, JobStatus.CANCELLED)]
        if broken:
            error = broken[0].error or {}
            raise TLServeError(
                f"a part of the extraction {broken[0].status}: {error.get('message', 'no reason recorded')}",
                code=error.get("code") or "shard_failed",
            )
        ctx.progress("shards", min(total, landed * fsets.CHUNK_SIZE), total, force=True, shards=len(shard_ids))
        raise JobReleased(f"job {ctx.job_id}: waiting for {n_chunks - landed} of {n_chunks} chunks")
    for index in range(n_chunks):  # every chunk holds exactly the images it should, in order
        hashes = rows[index * fsets.CHUNK_SIZE : (index + 1) * fsets.CHUNK_SIZE]
        if not _chunk_ok(storage, chunk_key(prefix, index), hashes):
            storage.delete(chunk_key(prefix, index))
            raise TLServeError(f"chunk {index} of the extraction does not match its images", code="shard_failed")
    done = [r.metrics or {} for r in shards]
    stats = {
        "shards": len(shard_ids),
        "chunks": n_chunks,
        "forward_images": sum(int(m.get("forward_images") or 0) for m in done),
        "shard_seconds": round(sum(float(m.get("seconds") or 0.0) for m in done), 3),
    }
    with session_scope() as s:
        users = fsets.mark_ready(s, tenant_id, content_key, stats, total)
    if not users:  # its datasets were deleted while it ran: leave no orphan chunks behind
        storage.delete_prefix(prefix)
    return {**stats, "shard_ids": shard_ids}


def extract_shard_job(ctx: JobContext) -> dict[str, Any]:
    """One run of chunks of a sharded extraction; sends the extraction job again when the last one lands."""
    from workers.dispatch import send_quietly

    p = ctx.params
    stats = extract_features(ctx, p["feature_set_id"], range(p["first_chunk"], p["stop_chunk"]), publish=False)
    with session_scope() as s:
        fs = s.get(FeatureSet, p["feature_set_id"])
        prefix = fs.storage_prefix if fs is not None else None
        n_chunks = fsets.num_chunks(len(ds.version_images(s, fs.version_id))) if fs is not None else 0
    if prefix is not None and _landed(get_storage(), prefix, n_chunks) == n_chunks:
        send_quietly(p["parent_job_id"], JobKind.EXTRACT, ctx.queue)
    return stats


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


def model_features(ctx: JobContext, model: Model) -> tuple[FeatureSet, int, dict[str, np.ndarray]]:
    """The features a model trains on (its backbone, over its dataset version; see ``ensure_features``),
    joined with that version's labels and splits: (feature set, images forwarded, labelled arrays)."""
    ctx.progress("features", 0, 1, force=True)
    fs, forwarded = ensure_features(
        ctx,
        model.dataset_id,
        model.backbone,
        version=model.lineage["dataset_version"],
        allow_random_weights=bool(model.params.get("allow_random_weights")),
        queue=model.params.get("queue", "cpu"),
    )
    with session_scope() as s:
        data = fsets.labelled_features(s, fs, model.version_id)
    ctx.check_cancelled(force=True)
    return fs, forwarded, data
