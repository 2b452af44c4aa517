"""Putting uploaded files into storage before a job reads them. Cheap checks happen here so that the
client hears at once about an upload that cannot work; the deep checks run in the ingestion job."""

from __future__ import annotations

import json

from fastapi import UploadFile

from core.errors import InvalidInput, UnsupportedMediaType
from core.keys import upload_prefix
from core.settings import Settings
from core.storage import get_storage
from workers.ingest.archive import labels_for_files

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def save_archive(upload: UploadFile, key: str) -> str:
    head = upload.file.read(4)
    upload.file.seek(0)
    if not head:
        raise InvalidInput("the archive is empty: upload a .zip with one folder per class or a labels.csv")
    if head not in ZIP_MAGIC:
        raise UnsupportedMediaType(
            f"'{upload.filename}' is not a zip archive: upload a .zip with one folder per class or a labels.csv"
        )
    get_storage().put_file(key, upload.file)
    return key


def save_files(files: list[UploadFile], labels: list[str], tenant_id: str, job_id: str, settings: Settings) -> str:
    if not files:
        raise InvalidInput("no files: send one or more image files in the 'files' field")
    if len(files) > settings.max_files_per_request:
        raise InvalidInput(
            f"too many files in one request ({len(files)}); the limit is {settings.max_files_per_request}"
        )
    names = [f.filename or f"file{i}" for i, f in enumerate(files)]
    per_file = labels_for_files(names, labels) if labels else [""] * len(names)  # no labels: the pool
    storage = get_storage()
    prefix = upload_prefix(tenant_id, job_id)
    entries = []
    for i, (upload, name, label) in enumerate(zip(files, names, per_file, strict=True)):
        key = f"{prefix}/{i:05d}"
        storage.put_file(key, upload.file)
        entries.append({"filename": name, "label": label, "key": key})
    manifest_key = f"{prefix}/manifest.json"
    storage.put_bytes(manifest_key, json.dumps({"files": entries}).encode())
    return manifest_key


async def read_files(
    files: list[UploadFile], settings: Settings, max_files: int | None = None
) -> list[tuple[str, bytes]]:
    """(name, bytes) of a few uploaded images for synchronous inference, within the per-request limits."""
    from workers.runtime.inference import check_files

    limit = max_files or settings.max_sync_files
    check_files([(f.filename or "", b"") for f in files], limit)
    out = []
    for i, upload in enumerate(files):
        data = await upload.read(settings.max_member_bytes + 1)
        if len(data) > settings.max_member_bytes:
            raise InvalidInput(f"file {upload.filename!r} is larger than {settings.max_member_bytes} bytes")
        out.append((upload.filename or f"file{i}", data))
    return out
