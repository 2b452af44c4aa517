"""Datasets and their immutable versions: creation, lookup scoped to a tenant, serialisation, deletion."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import get_owned
from core.errors import Conflict, InvalidInput, NotFound
from core.jobs import request_cancel
from core.keys import dataset_prefix, upload_prefix
from core.pagination import DEFAULT_LIMIT, Page, keyset_page
from core.status import ACTIVE_JOB, JobKind, ResourceStatus, VersionStatus
from core.tables import Dataset, DatasetVersion, FeatureSet, Image, Job

ACTIVE_RESOURCE = (ResourceStatus.QUEUED, ResourceStatus.RUNNING)

# An image without a label (a folder ``_unlabelled/`` in the zip, or files added without labels) is in the
# version's *pool*: ``Image.split == POOL`` and ``Image.label == UNLABELLED``. It belongs to no split and no
# class; whatever reads labels (class counts, splits, feature downloads, probes, fine-tuning, compare)
# leaves it out, and labelling it (``POST /v1/datasets/{id}/labels``) makes a new version.
POOL = "pool"
UNLABELLED = ""
LABELLED_SPLITS = ("train", "val", "test")
MAX_LABELS_PER_REQUEST = 10_000


def check_split_params(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise InvalidInput(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise InvalidInput(
            f"val_fraction + test_fraction must leave images for training (got {val_fraction + test_fraction:.2f})"
        )


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InvalidInput("name must be 1 to 200 characters")
    return name


def create_dataset(
    session: Session, tenant_id: str, name: str, params: dict[str, Any]
) -> tuple[Dataset, DatasetVersion]:
    dataset = Dataset(tenant_id=tenant_id, name=check_name(name))
    session.add(dataset)
    session.flush()
    version = DatasetVersion(dataset_id=dataset.id, version=1, status=VersionStatus.PROCESSING, params=params)
    session.add(version)
    session.flush()
    return dataset, version


def new_version(session: Session, dataset: Dataset) -> DatasetVersion:
    """The next version, built on the latest ready one. Only one version is processed at a time."""
    latest = latest_version(session, dataset.id)
    if latest is not None and latest.status == VersionStatus.PROCESSING:
        raise Conflict(f"version {latest.version} of dataset {dataset.id} is still processing; retry when it is ready")
    parent = latest_ready_version(session, dataset.id)
    base = parent or latest  # a dataset whose only version failed or was cancelled keeps its split settings
    params = {k: v for k, v in base.params.items() if k != "error"} if base else {}
    params["parent_version_id"] = parent.id if parent else None
    number = (latest.version if latest else 0) + 1
    version = DatasetVersion(dataset_id=dataset.id, version=number, status=VersionStatus.PROCESSING, params=params)
    session.add(version)
    try:
        session.flush()
    except IntegrityError:  # a concurrent request made this version number first: this one is told so
        session.rollback()
        raise Conflict(
            f"another version of dataset {dataset.id} is being made at this moment; retry when it is ready"
        ) from None
    return version


def get_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    return get_owned(session, Dataset, tenant_id, dataset_id, "dataset")


def delete_dataset(session: Session, tenant_id: str, dataset_id: str) -> list[str]:
    """Delete a dataset, its versions and images, and its feature sets (keeping stored features another
    dataset uses); cancel its running jobs and the extractions nothing else waits on. Returns the storage
    prefixes to remove once the transaction has committed (with the uploads its ingestions left)."""
    dataset = get_dataset(session, tenant_id, dataset_id)
    prefixes = [dataset_prefix(tenant_id, dataset_id), *_release_feature_sets(session, tenant_id, dataset_id)]
    for job in session.scalars(select(Job).where(Job.resource_id == dataset_id)):
        if job.status in ACTIVE_JOB:
            job.cancel_requested = True
        if job.kind == JobKind.INGEST:  # a failed or cancelled ingestion's upload (up to 512 MB) goes too
            prefixes.append(upload_prefix(tenant_id, job.id))
    session.delete(dataset)
    return prefixes


def _release_feature_sets(session: Session, tenant_id: str, dataset_id: str) -> list[str]:
    """Delete a dataset's feature sets. Stored chunks that another dataset's row still uses are kept; an
    extraction job another row waits on is handed to that row, any other is cancelled. Returns the
    storage prefixes no row uses any more (to remove once the transaction has committed)."""
    prefixes: list[str] = []
    rows = list(session.scalars(select(FeatureSet).where(FeatureSet.dataset_id == dataset_id)))
    for fs in rows:
        others = list(
            session.scalars(
                select(FeatureSet).where(
                    FeatureSet.tenant_id == tenant_id,
                    FeatureSet.cache_key == fs.cache_key,
                    FeatureSet.dataset_id != dataset_id,
                )
            )
        )
        if not others and fs.storage_prefix not in prefixes:
            prefixes.append(fs.storage_prefix)
        job = session.get(Job, fs.job_id) if fs.job_id else None
        if job is not None and job.status in ACTIVE_JOB and job.resource_id == fs.id:
            heir = next((o for o in others if o.job_id == job.id and o.status in ACTIVE_RESOURCE), None)
            if heir is not None:
                job.resource_id, job.params = heir.id, {**job.params, "feature_set_id": heir.id}
            else:
                request_cancel(session, tenant_id, job.id)
        session.delete(fs)
    return prefixes


def list_datasets(
    session: Session, tenant_id: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[Dataset]:
    """A page of the tenant's datasets, oldest first."""
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id)
    return keyset_page(session, stmt, [Dataset.created_at, Dataset.id], limit, cursor)


def latest_version(session: Session, dataset_id: str) -> DatasetVersion | None:
    stmt = select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id).order_by(DatasetVersion.version.desc())
    return session.scalars(stmt.limit(1)).first()


def latest_ready_version(session: Session, dataset_id: str) -> DatasetVersion | None:
    stmt = (
        select(DatasetVersion)
        .where(DatasetVersion.dataset_id == dataset_id, DatasetVersion.status == VersionStatus.READY)
        .order_by(DatasetVersion.version.desc())
    )
    return session.scalars(stmt.limit(1)).first()


def get_version(session: Session, dataset: Dataset, number: int | None) -> DatasetVersion:
    if number is None:
        version = latest_version(session, dataset.id)
    else:
        version = session.scalar(
            select(DatasetVersion).where(DatasetVersion.dataset_id == dataset.id, DatasetVersion.version == number)
        )
    if version is None:
        raise NotFound(f"dataset {dataset.id!r} has no version {number}")
    return version


def ready_version(session: Session, tenant_id: str, dataset_id: str, number: int | None = None) -> DatasetVersion:
    """The version to train on: the one asked for, or the latest ready one; refuses one still processing."""
    dataset = get_dataset(session, tenant_id, dataset_id)
    version = get_version(session, dataset, number) if number is not None else latest_ready_version(session, dataset.id)
    if version is None or version.status != VersionStatus.READY:
        raise Conflict(f"dataset {dataset_id!r} has no ready version yet; wait for its ingestion job to finish")
    return version


def version_images(session: Session, version_id: str, split: str | None = None, *, pool: bool = True) -> list[Image]:
    """The images of a version (of one split); ``pool=False`` leaves the unlabelled ones out."""
    stmt = select(Image).where(Image.version_id == version_id)
    if split is not None:
        stmt = stmt.where(Image.split == split)
    if not pool:
        stmt = stmt.where(Image.split != POOL)
    return list(session.scalars(stmt.order_by(Image.sha256)))


def pool_labels(session: Session, dataset: Dataset, labels: dict[str, str]) -> dict[str, str]:
    """``labels`` (image id → label; ids of any version of ``dataset``) checked against its latest version's
    pool and keyed by content hash, so an id from the version a model was trained on still names its image
    in a later version. Raises ``InvalidInput`` naming what to fix."""
    if not labels:
        raise InvalidInput('labels is empty: send {"labels": {"<image id>": "<label>", ...}}')
    if len(labels) > MAX_LABELS_PER_REQUEST:
        raise InvalidInput(f"{len(labels)} labels in one request; the limit is {MAX_LABELS_PER_REQUEST}")
    parent = latest_ready_version(session, dataset.id)
    if parent is None:
        raise Conflict(f"dataset {dataset.id!r} has no ready version yet; wait for its ingestion job to finish")
    stmt = (
        select(Image.id, Image.sha256)
        .join(DatasetVersion, Image.version_id == DatasetVersion.id)
        .where(DatasetVersion.dataset_id == dataset.id, Image.id.in_(list(labels)))
    )
    sha_of = {i: sha for i, sha in session.execute(stmt)}
    if unknown := [i for i in labels if i not in sha_of]:
        raise InvalidInput(f"no such image in dataset {dataset.id!r}: {', '.join(map(repr, unknown[:5]))}")
    stmt = select(Image.sha256, Image.split, Image.id).where(
        Image.version_id == parent.id, Image.sha256.in_(list(set(sha_of.values())))
    )
    now = {sha: (split, image_id) for sha, split, image_id in session.execute(stmt)}
    out: dict[str, str] = {}
    for image_id, label in labels.items():
        split, _ = now.get(sha_of[image_id], (None, None))
        if split is None:
            raise InvalidInput(f"image {image_id!r} is not in version {parent.version} of dataset {dataset.id!r}")
        if split != POOL:
            raise InvalidInput(
                f"image {image_id!r} is already labelled (in {split}) in version {parent.version}; "
                "only unlabelled images can be labelled here"
            )
        if out.get(sha_of[image_id], label) != label:
            raise InvalidInput(f"image {image_id!r} is given two different labels (through two versions' ids)")
        out[sha_of[image_id]] = label
    return out


def count_images(session: Session, version_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Image).where(Image.version_id == version_id)) or 0
