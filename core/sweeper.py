"""The sweeper: the safety net that deletes stored objects no live row needs any more.

The direct paths remove what they can (a deleted dataset's or model's prefix once the deletion has
committed, an upload when its job ends, the chunks of an extraction whose datasets all went meanwhile); the
sweeper removes what they missed: a worker killed between a commit and its delete, a store unreachable at
that moment, a job cancelled while still queued, the images a failed ingestion stored. Under
``tenants/<tenant>/`` it deletes

* ``uploads/<job>/…`` unless the job is still queued or running;
* ``datasets/<dataset>/…`` of a deleted dataset; in a live dataset with no version being ingested, the
  originals, canonical copies and thumbnails of images no version holds (a failed ingestion's);
* ``features/<cache key>/…`` unless some feature set using these vectors is ready, queued or running
  (vectors are stored once per content key and shared by every dataset version with the same images);
* ``models/<model>/…`` of a deleted model, or of one whose training failed or was cancelled.

Whatever else is stored (exported graphs, keys of another layout) is left alone, and so is every object
younger than ``sweep_grace_s``: a running job writes before its row says so, a deleted row's job may still
be stopping. Each owner's row is read just before its objects go. A sweep holds no lock: two at once delete
the same objects, which is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import session_scope
from core.settings import get_settings
from core.status import ACTIVE_JOB, ResourceStatus, VersionStatus
from core.storage import ObjectInfo, Storage, get_storage
from core.tables import Dataset, DatasetVersion, FeatureSet, Image, Job, Model

log = logging.getLogger(__name__)

KINDS = ("uploads", "datasets", "features", "models")
IMAGE_FOLDERS = ("blobs", "canonical", "thumbnails")  # under a dataset, named by the image's sha256
_LIVE = (ResourceStatus.READY, ResourceStatus.QUEUED, ResourceStatus.RUNNING)


@dataclass
class SweepSummary:
    """What one sweep found and deleted (or, in a dry run, would delete), in objects and bytes."""

    dry_run: bool
    grace_s: float
    scanned: int = 0
    scanned_bytes: int = 0
    too_young: int = 0  # objects left alone for their age alone
    deleted: int = 0
    deleted_bytes: int = 0
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)  # kind → {"objects", "bytes"}

    def add(self, kind: str, objects: list[ObjectInfo]) -> None:
        size = sum(o.size for o in objects)
        self.deleted += len(objects)
        self.deleted_bytes += size
        entry = self.by_kind.setdefault(kind, {"objects": 0, "bytes": 0})
        entry["objects"] += len(objects)
        entry["bytes"] += size

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "grace_s": self.grace_s,
            "scanned": self.scanned,
            "scanned_bytes": self.scanned_bytes,
            "too_young": self.too_young,
            "deleted": self.deleted,
            "deleted_bytes": self.deleted_bytes,
            "by_kind": self.by_kind,
        }


def _sha_of(info: ObjectInfo) -> str:
    return info.key.rsplit("/", 1)[-1].split(".", 1)[0]


def _unneeded(s: Session, tenant_id: str, kind: str, owner: str, objects: list[ObjectInfo]) -> list[ObjectInfo]:
    """Those of ``objects`` (all under ``tenants/<tenant_id>/<kind>/<owner>/``) that no live row needs."""
    if kind == "uploads":
        status = s.scalar(select(Job.status).where(Job.id == owner, Job.tenant_id == tenant_id))
        return [] if status in ACTIVE_JOB else objects
    if kind == "models":
        status = s.scalar(select(Model.status).where(Model.id == owner, Model.tenant_id == tenant_id))
        return [] if status in _LIVE else objects
    if kind == "features":
        # every row of these vectors has storage_prefix features_prefix(tenant_id, cache_key)
        stmt = select(FeatureSet.status).where(FeatureSet.tenant_id == tenant_id, FeatureSet.cache_key == owner)
        statuses = set(s.scalars(stmt))
        return [] if statuses & set(_LIVE) else objects
    # datasets
    if s.scalar(select(Dataset.id).where(Dataset.id == owner, Dataset.tenant_id == tenant_id)) is None:
        return objects
    versions = select(DatasetVersion.id).where(DatasetVersion.dataset_id == owner)
    if s.scalar(versions.where(DatasetVersion.status == VersionStatus.PROCESSING).limit(1)) is not None:
        return []  # an ingestion under way stores images before its version names them
    images = [o for o in objects if o.key.split("/")[4] in IMAGE_FOLDERS]
    if not images:
        return []
    held = set(s.scalars(select(Image.sha256).where(Image.version_id.in_(versions)).distinct()))
    return [o for o in images if _sha_of(o) not in held]


def sweep(
    storage: Storage | None = None,
    *,
    grace_s: float | None = None,
    dry_run: bool = False,
    now: float | None = None,
) -> SweepSummary:
    """One sweep over every tenant's objects; ``now`` (Unix seconds) is what ages are measured against."""
    storage = storage or get_storage()
    grace_s = get_settings().sweep_grace_s if grace_s is None else grace_s
    cutoff = (time.time() if now is None else now) - grace_s
    summary = SweepSummary(dry_run=dry_run, grace_s=grace_s)
    groups: dict[tuple[str, str, str], list[ObjectInfo]] = defaultdict(list)
    for info in storage.scan("tenants"):
        summary.scanned += 1
        summary.scanned_bytes += info.size
        if info.modified > cutoff:
            summary.too_young += 1
            continue
        parts = info.key.split("/")
        if len(parts) >= 5 and parts[2] in KINDS:  # tenants/<tenant>/<kind>/<owner>/...
            groups[(parts[1], parts[2], parts[3])].append(info)
    for (tenant_id, kind, owner), objects in sorted(groups.items()):
        with session_scope() as s:  # a fresh read per owner, just before its objects go
            doomed = _unneeded(s, tenant_id, kind, owner, objects)
        if not doomed:
            continue
        if not dry_run:
            storage.delete_many([o.key for o in doomed])
        summary.add(kind, doomed)
    if summary.deleted:
        verb = "would delete" if dry_run else "deleted"
        log.info("sweeper: %s %d object(s), %d bytes", verb, summary.deleted, summary.deleted_bytes)
    return summary


class SweepThread:
    """``sweep()`` every ``sweep_interval_s`` on a daemon thread until ``stop()`` (the first after one
    interval, so that a restart does not sweep at once); an interval of 0 starts nothing."""

    def __init__(self, interval_s: float | None = None, run: Callable[[], Any] = sweep) -> None:
        self.interval_s = get_settings().sweep_interval_s if interval_s is None else interval_s
        self._run_once = run
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tlserve-sweeper", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._run_once()
            except Exception:  # the database or the store is down: try again next round
                log.warning("sweep failed", exc_info=True)

    def start(self) -> SweepThread:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
