"""/v1/features: scenario 3's cached extraction, and downloads of the stored features."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from core.tables import FeatureSet
from service.deps import SessionDep, TenantDep
from workers import features as feats
from workers.dispatch import enqueue

router = APIRouter(prefix="/v1/features", tags=["features"])


class FeaturesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: str
    backbone: str = "efficientnet_lite0"
    version: int | None = Field(default=None, ge=1, description="dataset version; default: the latest ready one")
    allow_random_weights: bool = False
    queue: Literal["cpu", "gpu"] = "cpu"


@router.post("", status_code=202)
def request_features(body: FeaturesRequest, session: SessionDep, tenant_id: TenantDep, response: Response) -> dict:
    planned = feats.plan_extraction(
        session,
        tenant_id,
        body.dataset_id,
        body.backbone,
        version=body.version,
        allow_random_weights=body.allow_random_weights,
        queue=body.queue,
    )
    session.commit()
    if planned.job is not None:
        enqueue(planned.job.id, "extract", planned.job.queue)
    if planned.cached:
        response.status_code = 200  # served from the cache: nothing to wait for
    return {**feats.feature_set_to_dict(planned.feature_set), "cached": planned.cached}


@router.get("")
def list_features(session: SessionDep, tenant_id: TenantDep) -> list[dict[str, Any]]:
    rows = session.scalars(select(FeatureSet).where(FeatureSet.tenant_id == tenant_id).order_by(FeatureSet.created_at))
    return [feats.feature_set_to_dict(fs) for fs in rows]


@router.get("/{feature_set_id}")
def get_features(feature_set_id: str, session: SessionDep, tenant_id: TenantDep) -> dict[str, Any]:
    return feats.feature_set_to_dict(feats.get_feature_set(session, tenant_id, feature_set_id))


@router.get("/{feature_set_id}/download")
def download(
    feature_set_id: str, session: SessionDep, tenant_id: TenantDep, format: Literal["npz"] = Query("npz")
) -> Response:
    data = feats.download_npz(session, tenant_id, feature_set_id)
    headers = {"Content-Disposition": f'attachment; filename="{feature_set_id}.npz"'}
    return Response(data, media_type="application/octet-stream", headers=headers)
