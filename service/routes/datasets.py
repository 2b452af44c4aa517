"""/v1/datasets: upload labelled image sets; ingestion runs as a job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status

from core import datasets as ds
from core import usage
from core.errors import InvalidInput
from core.jobs import create_job
from core.keys import upload_key
from core.status import JobKind, ResourceType
from core.storage import get_storage
from service.deps import SessionDep, SettingsDep, TenantDep
from service.pagination import PageDep, set_link_header
from service.schemas import DatasetCreated, DatasetOut, LabelsIn
from service.uploads import save_archive, save_files
from workers.dispatch import submit
from workers.ingest.labels import LabelError, clean_label

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=DatasetCreated)
def create_dataset(
    session: SessionDep,
    tenant_id: TenantDep,
    archive: Annotated[UploadFile, File(description="zip: one folder per class, or labels.csv of path,label")],
    name: Annotated[str, Form()],
    val_fraction: Annotated[float, Form()] = 0.1,
    test_fraction: Annotated[float, Form()] = 0.2,
    seed: Annotated[int, Form()] = 0,
) -> DatasetCreated:
    ds.check_split_params(val_fraction, test_fraction)
    usage.check_storage(session, tenant_id, archive.size or 0)
    params = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    dataset, version = ds.create_dataset(session, tenant_id, name, params)
    job = create_job(
        session, tenant_id=tenant_id, kind=JobKind.INGEST, resource_type=ResourceType.DATASET, resource_id=dataset.id
    )
    key = save_archive(archive, upload_key(tenant_id, job.id))
    job.params = {"mode": "archive", "upload_key": key, "dataset_id": dataset.id, "version_id": version.id, **params}
    version.job_id = job.id
    submit(session, job)
    return DatasetCreated(id=dataset.id, job_id=job.id, status=version.status, version=version.version)


@router.post("/{dataset_id}/images", status_code=status.HTTP_202_ACCEPTED, response_model=DatasetCreated)
def add_images(
    dataset_id: str,
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="image files")],
    labels: Annotated[
        list[str] | None, Form(description="one label per file, or one label for all; none: unlabelled images")
    ] = None,
) -> DatasetCreated:
    dataset = ds.get_dataset(session, tenant_id, dataset_id)
    usage.check_storage(session, tenant_id, sum(f.size or 0 for f in files))
    version = ds.new_version(session, dataset)
    job = create_job(
        session, tenant_id=tenant_id, kind=JobKind.INGEST, resource_type=ResourceType.DATASET, resource_id=dataset.id
    )
    manifest_key = save_files(files, labels or [], tenant_id, job.id, settings)
    job.params = {
        "mode": "files",
        "manifest_key": manifest_key,
        "dataset_id": dataset.id,
        "version_id": version.id,
        **{k: version.params.get(k) for k in ("val_fraction", "test_fraction", "seed", "parent_version_id")},
    }
    version.job_id = job.id
    submit(session, job)
    return DatasetCreated(id=dataset.id, job_id=job.id, status=version.status, version=version.version)


@router.post("/{dataset_id}/labels", status_code=status.HTTP_202_ACCEPTED, response_model=DatasetCreated)
def label_images(dataset_id: str, body: LabelsIn, session: SessionDep, tenant_id: TenantDep) -> DatasetCreated:
    """Label unlabelled images (image id → label): a new immutable version where they are in ``train``
    (or, with ``split: "stratified"``, in whichever split their class lacks); nothing else moves."""
    dataset = ds.get_dataset(session, tenant_id, dataset_id)
    labels = ds.pool_labels(session, dataset, {i: _clean(i, label) for i, label in body.labels.items()})
    version = ds.new_version(session, dataset)
    job = create_job(
        session, tenant_id=tenant_id, kind=JobKind.INGEST, resource_type=ResourceType.DATASET, resource_id=dataset.id
    )
    job.params = {
        "mode": "labels",
        "labels": labels,
        "label_split": body.split,
        "dataset_id": dataset.id,
        "version_id": version.id,
        **{k: version.params.get(k) for k in ("val_fraction", "test_fraction", "seed", "parent_version_id")},
    }
    version.job_id = job.id
    submit(session, job)
    return DatasetCreated(id=dataset.id, job_id=job.id, status=version.status, version=version.version)


def _clean(image_id: str, label: str) -> str:
    try:
        return clean_label(label)
    except LabelError as e:
        raise InvalidInput(f"label for image {image_id!r}: {e}") from None


@router.get("", response_model=list[DatasetOut])
def list_datasets(
    request: Request, response: Response, session: SessionDep, tenant_id: TenantDep, page: PageDep
) -> list[DatasetOut]:
    """One page of datasets, oldest first; the next page's URL is in the ``Link`` header."""
    result = ds.list_datasets(session, tenant_id, page.limit, page.cursor)
    set_link_header(request, response, result.next_cursor)
    return [DatasetOut.from_row(d, ds.latest_version(session, d.id)) for d in result.items]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(
    dataset_id: str,
    session: SessionDep,
    tenant_id: TenantDep,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> DatasetOut:
    dataset = ds.get_dataset(session, tenant_id, dataset_id)
    row = ds.get_version(session, dataset, version) if version else ds.latest_version(session, dataset.id)
    return DatasetOut.from_row(dataset, row)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: str, session: SessionDep, tenant_id: TenantDep) -> None:
    prefixes = ds.delete_dataset(session, tenant_id, dataset_id)
    session.commit()
    storage = get_storage()
    for prefix in prefixes:
        storage.delete_prefix(prefix)
