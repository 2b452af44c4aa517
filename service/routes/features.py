"""/v1/features: scenario 3's cached extraction, and downloads of the stored features."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from core import features as fsets
from service.deps import SessionDep, TenantDep
from service.pagination import PageDep, set_link_header
from service.schemas import FeatureSetOut, FeaturesRequest
from workers import plan
from workers.dispatch import submit

router = APIRouter(prefix="/v1/features", tags=["features"])


@router.post("", status_code=202, response_model=FeatureSetOut, responses={200: {"model": FeatureSetOut}})
def request_features(
    body: FeaturesRequest, session: SessionDep, tenant_id: TenantDep, response: Response
) -> FeatureSetOut:
    """202 with the extraction job; 200 when the features are already in the cache."""
    extractor = plan.extractor(body.backbone, body.allow_random_weights, tenant_id, body.queue)
    planned = fsets.plan_extraction(
        session, tenant_id, body.dataset_id, extractor, version=body.version, queue=body.queue
    )
    submit(session, *([planned.job] if planned.job is not None else []))
    if planned.cached:
        response.status_code = 200  # served from the cache: nothing to wait for
    return FeatureSetOut.from_row(planned.feature_set, cached=planned.cached)


@router.get("", response_model=list[FeatureSetOut], response_model_exclude_none=True)
def list_features(
    request: Request, response: Response, session: SessionDep, tenant_id: TenantDep, page: PageDep
) -> list[FeatureSetOut]:
    """One page of feature sets, oldest first; the next page's URL is in the ``Link`` header."""
    result = fsets.list_feature_sets(session, tenant_id, page.limit, page.cursor)
    set_link_header(request, response, result.next_cursor)
    return [FeatureSetOut.from_row(fs) for fs in result.items]


@router.get("/{feature_set_id}", response_model=FeatureSetOut, response_model_exclude_none=True)
def get_features(feature_set_id: str, session: SessionDep, tenant_id: TenantDep) -> FeatureSetOut:
    return FeatureSetOut.from_row(fsets.get_feature_set(session, tenant_id, feature_set_id))


@router.get(
    "/{feature_set_id}/download",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "an npz without pickles"}},
)
def download(
    feature_set_id: str, session: SessionDep, tenant_id: TenantDep, format: Literal["npz"] = Query("npz")
) -> Response:
    """The npz is built in a temporary file (one stored chunk of features in memory at a time) and streamed."""
    data = fsets.download_npz(session, tenant_id, feature_set_id)
    size = data.seek(0, 2)
    data.seek(0)
    headers = {"Content-Disposition": f'attachment; filename="{feature_set_id}.npz"', "Content-Length": str(size)}
    return StreamingResponse(_blocks(data), media_type="application/octet-stream", headers=headers)


def _blocks(data: IO[bytes], size: int = 2**20) -> Iterator[bytes]:
    try:
        while block := data.read(size):
            yield block
    finally:
        data.close()
