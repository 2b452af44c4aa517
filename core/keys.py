"""Every storage key the service writes, built in one place: ``tenants/<tenant>/…``.

Keys are relative to the storage root; ``core.storage`` refuses any key that would leave it."""

from __future__ import annotations


def tenant_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}"


def dataset_prefix(tenant_id: str, dataset_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}/datasets/{dataset_id}"


def blob_key(tenant_id: str, dataset_id: str, sha256: str) -> str:
    """An uploaded image's original bytes, stored once per dataset."""
    return f"{dataset_prefix(tenant_id, dataset_id)}/blobs/{sha256[:2]}/{sha256}"


def canonical_key(tenant_id: str, dataset_id: str, sha256: str) -> str:
    """The decoded, bounded-size copy every job reads."""
    return f"{dataset_prefix(tenant_id, dataset_id)}/canonical/{sha256[:2]}/{sha256}.png"


def thumbnail_key(tenant_id: str, dataset_id: str, sha256: str, size: int) -> str:
    """A cached JPEG thumbnail (deleted with the dataset)."""
    return f"{dataset_prefix(tenant_id, dataset_id)}/thumbnails/{size}/{sha256[:2]}/{sha256}.jpg"


def upload_prefix(tenant_id: str, job_id: str) -> str:
    """Where a request's upload waits for its job; removed when the job is done with it."""
    return f"{tenant_prefix(tenant_id)}/uploads/{job_id}"


def upload_key(tenant_id: str, job_id: str, name: str = "archive.zip") -> str:
    return f"{upload_prefix(tenant_id, job_id)}/{name}"


def features_prefix(tenant_id: str, cache_key: str) -> str:
    return f"{tenant_prefix(tenant_id)}/features/{cache_key}"


def chunk_key(prefix: str, index: int) -> str:
    """One stored chunk of a feature set (``features``, ``sha256``)."""
    return f"{prefix}/chunk-{index:05d}.npz"


def model_prefix(tenant_id: str, model_id: str) -> str:
    return f"{tenant_prefix(tenant_id)}/models/{model_id}"


def predictions_key(model_prefix_: str, job_id: str, fmt: str) -> str:
    """A batch prediction's results (``csv`` or ``json``)."""
    return f"{model_prefix_}/predictions/{job_id}.{fmt}"
