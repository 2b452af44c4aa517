"""/v1/datasets/{id}/images: browse a dataset version's images page by page, and their thumbnails."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from core import images
from core.db import session_scope
from core.errors import InvalidInput
from service.deps import SessionDep, TenantDep
from service.pagination import PageDep, set_link_header
from service.schemas import ImageOut

router = APIRouter(prefix="/v1/datasets/{dataset_id}/images", tags=["datasets"])


@router.get("", response_model=list[ImageOut])
def list_images(
    dataset_id: str,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant_id: TenantDep,
    page: PageDep,
    version: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="dataset version (default: the latest)")
    ] = None,
    split: Annotated[images.Split | None, Query()] = None,
    label: Annotated[str | None, Query(max_length=100)] = None,
) -> list[ImageOut]:
    """One page of images ordered by file name; the next page's URL is in the ``Link`` header."""
    result = images.list_images(
        session, tenant_id, dataset_id, version=version, split=split, label=label, limit=page.limit, cursor=page.cursor
    )
    set_link_header(request, response, result.next_cursor)
    return [ImageOut.of(i) for i in result.items]


def _thumbnail(tenant_id: str, dataset_id: str, image_id: str, size: int) -> bytes:
    with session_scope() as session:
        return images.thumbnail(session, tenant_id, dataset_id, image_id, size)


@router.get(
    "/{image_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG within size x size pixels"}},
)
async def thumbnail(
    dataset_id: str,
    image_id: str,
    tenant_id: TenantDep,
    size: Annotated[int, Query(description=f"bounding box in pixels, one of {images.THUMBNAIL_SIZES}")] = (
        images.DEFAULT_THUMBNAIL_SIZE
    ),
) -> Response:
    if size not in images.THUMBNAIL_SIZES:
        raise InvalidInput(f"size must be one of {list(images.THUMBNAIL_SIZES)}, got {size}")
    data = await run_in_threadpool(_thumbnail, tenant_id, dataset_id, image_id, size)
    # The image behind an id never changes (versions are immutable), so the browser may keep it.
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
