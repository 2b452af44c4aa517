"""Feature sets: the pooled features of every image of a dataset version under one backbone, found in the
cache or planned as an extraction job, and read back joined with a version's labels.

The cache key covers the images *and* what extracts them (backbone, weights, preprocessing, layer, engine);
labels and splits are never part of a feature set: they are read from the dataset version that asks, so two
datasets with the same images share the forward passes but never each other's labels.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from typing import IO

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import datasets as ds
from core.db import get_owned
from core.errors import Conflict
from core.jobs import create_job
from core.keys import chunk_key, features_prefix
from core.pagination import DEFAULT_LIMIT, Page, keyset_page
from core.status import JobKind, ResourceStatus, ResourceType
from core.storage import get_storage
from core.tables import FeatureSet, Image, Job

NPZ_SPOOL_BYTES = 8 * 2**20  # an npz download bigger than this is built on disk, not in memory
CHUNK_SIZE = 512  # images per stored chunk: bounded memory, fine-grained resume
FORMAT_VERSION = 1
MODEL_PREFIX = "model:"  # a tenant's fine-tuned model used as a backbone: "model:<model id>"


@dataclass(frozen=True)
class Extractor:
    """What turns images into features, as plain values (the workers' registry resolves a name into one)."""

    backbone: str
    weights_digest: str
    preprocessing: str
    layer: str
    engine: str
    feature_dim: int


def cache_key(hashes: list[str], extractor: Extractor) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "images": hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest(),
        "backbone": extractor.backbone,
        "weights": extractor.weights_digest,
        "preprocessing": extractor.preprocessing,
        "layer": extractor.layer,
        "engine": extractor.engine,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class Planned:
    feature_set: FeatureSet
    job: Job | None  # None: ready in the cache, or already being extracted by another job
    cached: bool


_LIVE = (ResourceStatus.READY, ResourceStatus.QUEUED, ResourceStatus.RUNNING)
_BUILDING = (ResourceStatus.QUEUED, ResourceStatus.RUNNING)


def _own_row(session: Session, tenant_id: str, version_id: str, key: str) -> FeatureSet | None:
    stmt = select(FeatureSet).where(
        FeatureSet.tenant_id == tenant_id, FeatureSet.version_id == version_id, FeatureSet.cache_key == key
    )
    return session.scalar(stmt)


def _live_sibling(session: Session, tenant_id: str, key: str, exclude_id: str) -> FeatureSet | None:
    """Another version's row with the same features, ready ones first: its chunks are this row's too."""
    stmt = select(FeatureSet).where(
        FeatureSet.tenant_id == tenant_id,
        FeatureSet.cache_key == key,
        FeatureSet.id != exclude_id,
        FeatureSet.status.in_(_LIVE),
    )
    rows = list(session.scalars(stmt))
    rows.sort(key=lambda r: r.status != ResourceStatus.READY)
    return rows[0] if rows else None


def plan_extraction(
    session: Session,
    tenant_id: str,
    dataset_id: str,
    extractor: Extractor,
    *,
    version: int | None = None,
    queue: str = "cpu",
) -> Planned:
    """This dataset version's own feature set: found, made ready from another version's stored chunks of
    the same images (no forward pass), joined to the job already extracting them, or created with an
    extraction job (the caller submits it). A feature set that failed or was cancelled is planned again."""
    dv = ds.ready_version(session, tenant_id, dataset_id, version)
    hashes = list(session.scalars(select(Image.sha256).where(Image.version_id == dv.id)))
    key = cache_key(hashes, extractor)
    found = _own_row(session, tenant_id, dv.id, key)
    if found is not None and found.status in _LIVE:
        return Planned(found, None, cached=found.status == ResourceStatus.READY)
    if found is None:
        found = FeatureSet(
            tenant_id=tenant_id,
            cache_key=key,
            dataset_id=dataset_id,
            version_id=dv.id,
            backbone=extractor.backbone,
            weights_digest=extractor.weights_digest,
            engine=extractor.engine,
            storage_prefix=features_prefix(tenant_id, key),
            feature_dim=extractor.feature_dim,
            num_images=len(hashes),
            stats={},
        )
        try:
            with session.begin_nested():
                session.add(found)
        except IntegrityError:  # a concurrent request created it first
            found = _own_row(session, tenant_id, dv.id, key)
            return Planned(found, None, cached=found.status == ResourceStatus.READY)
    sibling = _live_sibling(session, tenant_id, key, found.id)
    if sibling is not None:  # the vectors exist, or are being made, for another version: share them
        found.status, found.job_id = sibling.status, sibling.job_id
        found.stats = {**(sibling.stats or {}), "shared_from": sibling.id}
        return Planned(found, None, cached=found.status == ResourceStatus.READY)
    job = create_job(
        session,
        tenant_id=tenant_id,
        kind=JobKind.EXTRACT,
        queue=queue,
        resource_type=ResourceType.FEATURES,
        resource_id=found.id,
        params={"feature_set_id": found.id},
    )
    found.status, found.job_id = ResourceStatus.QUEUED, job.id
    return Planned(found, job, cached=False)


def mark_running(session: Session, fs: FeatureSet) -> None:
    """The job extracting ``fs`` has started: so has every row waiting on the same job."""
    fs.status = ResourceStatus.RUNNING
    if fs.job_id is not None:
        for row in session.scalars(
            select(FeatureSet).where(FeatureSet.job_id == fs.job_id, FeatureSet.status == ResourceStatus.QUEUED)
        ):
            row.status = ResourceStatus.RUNNING


def mark_ready(session: Session, tenant_id: str, key: str, stats: dict, num_images: int) -> int:
    """Every chunk of ``key`` is stored: every row of these features still waiting is ready (whichever
    version asked, even when the row that started the job has been deleted since). Returns how many rows
    use these features; none means every dataset that asked was deleted meanwhile."""
    rows = list(
        session.scalars(select(FeatureSet).where(FeatureSet.tenant_id == tenant_id, FeatureSet.cache_key == key))
    )
    for row in rows:
        if row.status in _BUILDING:
            row.status, row.stats, row.num_images = ResourceStatus.READY, stats, num_images
    return len(rows)


def get_feature_set(session: Session, tenant_id: str, feature_set_id: str) -> FeatureSet:
    return get_owned(session, FeatureSet, tenant_id, feature_set_id, "feature set")


def list_feature_sets(
    session: Session, tenant_id: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[FeatureSet]:
    """A page of the tenant's feature sets, oldest first."""
    stmt = select(FeatureSet).where(FeatureSet.tenant_id == tenant_id)
    return keyset_page(session, stmt, [FeatureSet.created_at, FeatureSet.id], limit, cursor)


def num_chunks(num_images: int) -> int:
    return (num_images + CHUNK_SIZE - 1) // CHUNK_SIZE


def load_features(fs: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """(features N×D float32, sha256 N) in the stored order."""
    storage = get_storage()
    feats, hashes = [], []
    for index in range(num_chunks(fs.num_images)):
        with np.load(io.BytesIO(storage.get_bytes(chunk_key(fs.storage_prefix, index))), allow_pickle=False) as z:
            feats.append(z["features"])
            hashes.append(z["sha256"])
    if not feats:
        return np.zeros((0, fs.feature_dim), np.float32), np.array([], dtype="<U64")
    return np.concatenate(feats), np.concatenate(hashes)


def labelled_features(session: Session, fs: FeatureSet, version_id: str) -> dict[str, np.ndarray]:
    """Features joined with one dataset version's labels, ids and splits (never another version's); the
    version's unlabelled pool is left out."""
    feats, hashes = load_features(fs)
    rows = {img.sha256: img for img in ds.version_images(session, version_id, pool=False)}
    keep = np.array([h in rows for h in hashes], dtype=bool)
    feats, hashes = feats[keep], hashes[keep]
    return {
        "features": feats,
        "sha256": hashes,
        "labels": np.array([rows[h].label for h in hashes]),
        "image_ids": np.array([rows[h].id for h in hashes]),
        "splits": np.array([rows[h].split for h in hashes]),
    }


def split_arrays(data: dict[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of one split of ``labelled_features``' output."""
    mask = data["splits"] == split
    return data["features"][mask], data["labels"][mask]


def download_npz(session: Session, tenant_id: str, feature_set_id: str) -> IO[bytes]:
    """``labelled_features`` as an npz without pickles, in a temporary file (on disk beyond a few MB) rewound
    for reading; see :func:`write_npz`."""
    fs = get_feature_set(session, tenant_id, feature_set_id)
    if fs.status != ResourceStatus.READY:
        raise Conflict(f"feature set {feature_set_id!r} is {fs.status}; download it when its job has succeeded")
    out = tempfile.SpooledTemporaryFile(max_size=NPZ_SPOOL_BYTES)  # noqa: SIM115  (the response closes it)
    try:
        write_npz(session, fs, fs.version_id, out)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def write_npz(session: Session, fs: FeatureSet, version_id: str, out: IO[bytes]) -> None:
    """What ``np.savez(out, **labelled_features(...))`` writes (the same members, in the same order), with
    one stored chunk in memory at a time: the kept feature rows go to a temporary file chunk by chunk and are
    copied into the ``features.npy`` member behind its header, so the whole matrix is never in memory."""
    storage = get_storage()
    rows = {img.sha256: img for img in ds.version_images(session, version_id, pool=False)}
    hashes = [np.array([], dtype="<U64")]
    with tempfile.TemporaryFile() as raw:
        for index in range(num_chunks(fs.num_images)):
            with np.load(io.BytesIO(storage.get_bytes(chunk_key(fs.storage_prefix, index))), allow_pickle=False) as z:
                feats, sha = z["features"], z["sha256"]
            keep = np.array([h in rows for h in sha], dtype=bool)
            raw.write(np.ascontiguousarray(feats[keep], dtype=np.float32).tobytes())
            hashes.append(sha[keep])
        kept = np.concatenate(hashes)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("features.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {**header, "shape": (len(kept), fs.feature_dim)})
                raw.seek(0)
                shutil.copyfileobj(raw, member, 2**20)
            columns = {
                "sha256": kept,
                "labels": np.array([rows[h].label for h in kept]),
                "image_ids": np.array([rows[h].id for h in kept]),
                "splits": np.array([rows[h].split for h in kept]),
            }
            for name, array in columns.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
