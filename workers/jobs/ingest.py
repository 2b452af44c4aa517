"""The ingestion job: read an upload under limits, decode and validate every image, store each distinct
image once, split, and publish a new immutable dataset version in one transaction.

Safe to run again after a crash: blobs are content-addressed (rewriting one is a no-op) and the version's
image rows are replaced as a whole inside the same transaction that marks the version ready.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete

from core import datasets as ds
from core.db import session_scope
from core.errors import InvalidInput, NotFound, TLServeError
from core.images import stored_filename
from core.jobs import JobContext
from core.keys import blob_key, canonical_key, upload_prefix
from core.settings import get_settings
from core.status import VersionStatus
from core.storage import get_storage
from core.tables import DatasetVersion, Image
from workers.ingest.archive import ArchiveLimits, Member, Rejection, read_archive
from workers.ingest.images import DecodedImage, ImageLimits, ImageRejected, canonical_bytes, decoding
from workers.ingest.stratify import stratified_split

log = logging.getLogger(__name__)


@dataclass
class _Accepted:
    sha256: str
    filename: str
    label: str
    width: int
    height: int
    size_bytes: int
    format: str


@contextmanager
def _open_members(ctx: JobContext) -> Iterator[tuple[int, Iterator[Member], list[Rejection]]]:
    """(expected count, a one-pass stream of members, rejections filled while streaming)."""
    storage = get_storage()
    if ctx.params["mode"] == "archive":
        with storage.open(ctx.params["upload_key"]) as fh:
            contents = read_archive(fh, ArchiveLimits.from_settings(get_settings()))
            yield contents.expected, contents.members, contents.rejected
        return
    if ctx.params["mode"] == "labels":  # labels for images already stored: nothing to read
        yield 0, iter(()), []
        return
    files = json.loads(storage.get_bytes(ctx.params["manifest_key"]))["files"]
    stream = (Member(name=f["filename"], label=f["label"], data=storage.get_bytes(f["key"])) for f in files)
    yield len(files), stream, []


@dataclass
class _Decoded:
    member: Member
    image: DecodedImage | None  # None: rejected for ``reason``
    canonical: bytes = b""
    reason: str = ""


def _decoded(members: Iterator[Member], limits: ImageLimits, short_side: int, threads: int) -> Iterator[_Decoded]:
    """Each member decoded and its canonical copy made, in upload order, on ``threads`` threads with at most
    ``4 × threads`` images in flight (memory stays bounded; Pillow releases the GIL while it codes)."""

    def prepare(decode: Callable[[bytes, str], DecodedImage], member: Member) -> _Decoded:
        try:
            img = decode(member.data, member.name)
        except ImageRejected as exc:
            return _Decoded(member, None, reason=exc.reason)
        return _Decoded(member, img, canonical_bytes(img, member.data, short_side))

    with decoding(limits) as decode, ThreadPoolExecutor(max_workers=threads) as pool:
        window: deque[Future[_Decoded]] = deque()
        for member in members:
            window.append(pool.submit(prepare, decode, member))
            if len(window) >= 4 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _store_images(
    ctx: JobContext, known: dict[str, str], rejected: list[dict[str, str]]
) -> tuple[list[_Accepted], list[dict[str, str]]]:
    """Decode and store each new distinct image; ``known`` maps sha256 → label already in the dataset."""
    settings, storage = get_settings(), get_storage()
    limits = ImageLimits.from_settings(settings)
    dataset_id, tenant_id = ctx.params["dataset_id"], ctx.tenant_id
    accepted: dict[str, _Accepted] = {}
    duplicates: list[dict[str, str]] = []
    with _open_members(ctx) as (expected, members, archive_rejections):
        stream = _decoded(members, limits, settings.canonical_short_side, settings.ingest_threads)
        for i, item in enumerate(stream):
            ctx.check_cancelled()
            ctx.progress("decode", i, expected)
            member, img = item.member, item.image
            if img is None:
                rejected.append({"file": member.name, "reason": item.reason})
                continue
            sha = img.sha256
            if sha in accepted or sha in known:
                before = accepted[sha].label if sha in accepted else known[sha]
                other = accepted[sha].filename if sha in accepted else "an image already in the dataset"
                if sha in known and before == ds.UNLABELLED and member.label != ds.UNLABELLED:
                    reason = (
                        "same content as an unlabelled image already in the dataset: label it with "
                        f"POST /v1/datasets/{dataset_id}/labels"
                    )
                    rejected.append({"file": member.name, "reason": reason})
                elif member.label == ds.UNLABELLED and before != ds.UNLABELLED:
                    rejected.append({"file": member.name, "reason": f"same content as {other}, labelled {before!r}"})
                elif before != member.label:
                    reason = f"same content as {other} but labelled {member.label!r} instead of {before!r}"
                    rejected.append({"file": member.name, "reason": reason})
                else:
                    duplicates.append({"file": member.name, "duplicate_of": other})
                continue
            key = blob_key(tenant_id, dataset_id, sha)
            if not storage.exists(key):
                storage.put_bytes(key, member.data, durable=False)
            ckey = canonical_key(tenant_id, dataset_id, sha)
            if not storage.exists(ckey):
                storage.put_bytes(ckey, item.canonical, durable=False)
            name = stored_filename(member.name)  # a 600-character path still fits the column
            accepted[sha] = _Accepted(sha, name, member.label, img.width, img.height, img.size_bytes, img.format)
        rejected[:0] = [{"file": r.file, "reason": r.reason} for r in archive_rejections]
    storage.sync()  # every blob is on disk before the version that names it is published
    ctx.progress("decode", expected, expected, force=True)
    return list(accepted.values()), duplicates


def ingest_job(ctx: JobContext) -> dict[str, Any]:
    """Job body; any failure leaves the version failed or cancelled (earlier versions are untouched)."""
    params = ctx.params
    version_id, dataset_id = params["version_id"], params["dataset_id"]
    rejected: list[dict[str, str]] = []

    parent_rows: list[Image] = []
    with session_scope() as s:
        if params.get("parent_version_id"):
            parent_rows = ds.version_images(s, params["parent_version_id"])
            s.expunge_all()
    parent_rows = _apply_labels(parent_rows, params.get("labels") or {}, params.get("label_split", "train"))
    known = {row.sha256: row.label for row in parent_rows}

    accepted, duplicates = _store_images(ctx, known, rejected)
    if not accepted and not parent_rows:
        message = "no usable images in the upload" + (
            f": {len(rejected)} rejected (see 'rejected')" if rejected else ""
        )
        _record_rejections(version_id, rejected)
        raise InvalidInput(message)

    labelled = [(r.sha256, r.label) for r in parent_rows if r.label != ds.UNLABELLED]
    items = labelled + [(a.sha256, a.label) for a in accepted if a.label != ds.UNLABELLED]
    existing = {r.sha256: r.split for r in parent_rows if r.split in ds.LABELLED_SPLITS}
    splits = stratified_split(items, params["val_fraction"], params["test_fraction"], params["seed"], existing=existing)
    splits |= {r.sha256: ds.POOL for r in parent_rows if r.label == ds.UNLABELLED}
    splits |= {a.sha256: ds.POOL for a in accepted if a.label == ds.UNLABELLED}
    ctx.check_cancelled(force=True)
    _publish(ctx, version_id, dataset_id, parent_rows, accepted, splits, rejected, duplicates)
    _cleanup_upload(ctx)
    counts = Counter(splits.values())
    return {
        "images": len(splits),
        "added": len(accepted),
        "labelled": len(params.get("labels") or {}),
        "unlabelled": counts.get(ds.POOL, 0),
        "rejected": len(rejected),
        "duplicates": len(duplicates),
        "splits": {k: counts.get(k, 0) for k in ("train", "val", "test")},
    }


def _publish(
    ctx: JobContext,
    version_id: str,
    dataset_id: str,
    parent_rows: list[Image],
    accepted: list[_Accepted],
    splits: dict[str, str],
    rejected: list[dict[str, str]],
    duplicates: list[dict[str, str]],
) -> None:
    tenant_id = ctx.tenant_id
    rows = [
        Image(
            version_id=version_id,
            sha256=r.sha256,
            filename=r.filename,
            label=r.label,
            split=splits[r.sha256],
            width=r.width,
            height=r.height,
            size_bytes=r.size_bytes,
            format=r.format,
            storage_key=r.storage_key,
            canonical_key=r.canonical_key,
        )
        for r in parent_rows
    ] + [
        Image(
            version_id=version_id,
            sha256=a.sha256,
            filename=a.filename,
            label=a.label,
            split=splits[a.sha256],
            width=a.width,
            height=a.height,
            size_bytes=a.size_bytes,
            format=a.format,
            storage_key=blob_key(tenant_id, dataset_id, a.sha256),
            canonical_key=canonical_key(tenant_id, dataset_id, a.sha256),
        )
        for a in accepted
    ]
    classes = Counter(row.label for row in rows if row.split != ds.POOL)
    split_counts = Counter(row.split for row in rows)
    with session_scope() as s:
        s.execute(delete(Image).where(Image.version_id == version_id))  # a redelivered job replaces, never duplicates
        s.add_all(rows)
        version = s.get(DatasetVersion, version_id)
        if version is None:
            raise NotFound("the dataset was deleted while its images were being ingested")
        version.status = VersionStatus.READY
        version.num_images = len(rows)
        version.classes = dict(sorted(classes.items()))
        version.splits = {k: split_counts.get(k, 0) for k in ("train", "val", "test")}
        version.rejected = rejected
        version.duplicates = duplicates


def _apply_labels(rows: list[Image], labels: dict[str, str], label_split: str) -> list[Image]:
    """The parent's rows with the pool images named in ``labels`` (sha256 → label) labelled. Such an image
    goes to ``train`` (``label_split="train"``: images picked for labelling are not a random sample, so
    they stay out of the splits that measure) or, with ``"stratified"``, to whichever split its class
    lacks. Every other image keeps its label and split; a test image never moves. A labelled image is a new
    detached row; the parent's rows are never changed."""
    if not labels:
        return rows
    found = {r.sha256 for r in rows if r.sha256 in labels and r.split == ds.POOL}
    if missing := len(set(labels) - found):
        raise InvalidInput(f"{missing} of the images to label are no longer unlabelled in the latest version")
    out = []
    for r in rows:
        if r.sha256 in labels:
            split = "train" if label_split == "train" else "new"  # "new": stratified_split places it
            r = Image(**{c: getattr(r, c) for c in _IMAGE_COLUMNS}, label=labels[r.sha256], split=split)
        out.append(r)
    return out


_IMAGE_COLUMNS = ("sha256", "filename", "width", "height", "size_bytes", "format", "storage_key", "canonical_key")


def _record_rejections(version_id: str, rejected: list[dict[str, str]]) -> None:
    with session_scope() as s:
        version = s.get(DatasetVersion, version_id)
        if version is not None:
            version.rejected = rejected


def _cleanup_upload(ctx: JobContext) -> None:
    try:
        get_storage().delete_prefix(upload_prefix(ctx.tenant_id, ctx.job_id))
    except TLServeError:  # pragma: no cover - a leftover upload is harmless
        log.warning("could not remove the upload of job %s", ctx.job_id)
