"""/v1/features/{id}/search and /near-duplicates: the nearest images of a query in a feature set, and the
test images that nearly duplicate a training image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from service.deps import SettingsDep, TenantDep
from service.schemas import NearDuplicatesOut, SearchOut
from service.uploads import read_files
from workers.runtime import similarity

router = APIRouter(prefix="/v1/features", tags=["features"])


@router.post("/{feature_set_id}/search", response_model=SearchOut, response_model_exclude_none=True)
async def search(
    feature_set_id: str,
    tenant_id: TenantDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile] | None, File()] = None,
    image_id: Annotated[str | None, Form(max_length=40)] = None,
    k: Annotated[int, Form(ge=1, le=similarity.MAX_K)] = 10,
) -> SearchOut:
    """The ``k`` nearest images of the set to each uploaded image, or to the set's image ``image_id``."""
    payload = await read_files(files, settings) if files else []
    results = await run_in_threadpool(similarity.search_images, tenant_id, feature_set_id, payload, image_id, k)
    return SearchOut.model_validate({"feature_set_id": feature_set_id, "k": k, "results": results})


@router.get("/{feature_set_id}/near-duplicates", response_model=NearDuplicatesOut)
def near_duplicates(
    feature_set_id: str,
    tenant_id: TenantDep,
    threshold: Annotated[float, Query(ge=0.0, le=2.0)] = similarity.LEAK_THRESHOLD,
    ratio: Annotated[float, Query(gt=0.0, le=1.0)] = similarity.LEAK_RATIO,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> NearDuplicatesOut:
    """Test images whose nearest training image is within ``threshold`` (cosine distance) and nearer than
    ``ratio`` times the next training image (1 turns that test off), closest first: images that leak from
    training into the test split and flatter the test metrics."""
    pairs = similarity.get_index(tenant_id, feature_set_id).leaks(threshold, ratio, limit)
    body = {"feature_set_id": feature_set_id, "threshold": threshold, "ratio": ratio, "pairs": pairs}
    return NearDuplicatesOut.model_validate(body)
