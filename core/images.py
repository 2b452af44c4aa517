"""The images of a dataset version: a paginated listing and small thumbnails, scoped to the tenant.

Thumbnails are made from the canonical copy (already decoded, oriented, RGB and bounded) and cached in
storage beside the dataset's blobs, so they go when the dataset goes and are shared by every version."""

from __future__ import annotations

import hashlib
import io
from typing import Literal

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import datasets as ds
from core.errors import NotFound
from core.keys import thumbnail_key
from core.pagination import Page, keyset_page
from core.storage import get_storage
from core.tables import DatasetVersion, Image

# The one list of image formats the service reads (Pillow's names), judged by content: ingestion and every
# synchronous path (predict, embed, classify) open files with exactly these, never every format Pillow knows.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
FILENAME_MAX = 500  # the images.filename column


def stored_filename(name: str, limit: int = FILENAME_MAX) -> str:
    """A file name that fits the column: unchanged when it fits, else its start, a digest of the whole name
    (so two long names that share a start stay apart) and its extension."""
    if len(name) <= limit:
        return name
    dot = name.rfind(".")
    ext = name[dot:] if dot > name.rfind("/") and len(name) - dot <= 16 else ""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{name[: limit - len(ext) - len(digest) - 1]}~{digest}{ext}"


THUMBNAIL_SIZES = (64, 128, 256)
DEFAULT_THUMBNAIL_SIZE = 128
Split = Literal["train", "val", "test", "pool"]  # pool: unlabelled images


def list_images(
    session: Session,
    tenant_id: str,
    dataset_id: str,
    *,
    version: int | None = None,
    split: Split | None = None,
    label: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[Image]:
    """A page of a dataset version's images (the latest version by default), ordered by file name."""
    dataset = ds.get_dataset(session, tenant_id, dataset_id)
    dv = ds.get_version(session, dataset, version)
    stmt = select(Image).where(Image.version_id == dv.id)
    if split is not None:
        stmt = stmt.where(Image.split == split)
    if label is not None:
        stmt = stmt.where(Image.label == label)
    return keyset_page(session, stmt, [Image.filename, Image.id], limit, cursor)


def get_image(session: Session, tenant_id: str, dataset_id: str, image_id: str) -> Image:
    """An image of one of the tenant's datasets; any other id (another tenant's too) is ``NotFound``."""
    dataset = ds.get_dataset(session, tenant_id, dataset_id)
    stmt = (
        select(Image)
        .join(DatasetVersion, Image.version_id == DatasetVersion.id)
        .where(Image.id == image_id, DatasetVersion.dataset_id == dataset.id)
    )
    image = session.scalar(stmt)
    if image is None:
        raise NotFound(f"image {image_id!r} not found in dataset {dataset_id!r}")
    return image


def make_thumbnail(data: bytes, size: int) -> bytes:
    """A JPEG that fits in ``size`` x ``size``, aspect ratio kept."""
    with PILImage.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))
        thumb = img.convert("RGB")
        thumb.thumbnail((size, size), PILImage.Resampling.LANCZOS)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()


def thumbnail(session: Session, tenant_id: str, dataset_id: str, image_id: str, size: int) -> bytes:
    """The thumbnail's JPEG bytes, made on first request and then read from the storage cache."""
    image = get_image(session, tenant_id, dataset_id, image_id)
    storage = get_storage()
    key = thumbnail_key(tenant_id, dataset_id, image.sha256, size)
    if storage.exists(key):
        return storage.get_bytes(key)
    data = make_thumbnail(storage.get_bytes(image.canonical_key), size)
    storage.put_bytes(key, data, durable=False)
    return data
