"""/v1/backbones, /v1/embed: the registry and scenario 1 (a pretrained network used as it is)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from service.deps import SessionDep, SettingsDep, TenantDep
from service.uploads import read_files
from workers import inference
from workers.backbones import describe_backbone, get_backbone, list_backbones

router = APIRouter(tags=["backbones"])


@router.get("/v1/backbones")
def backbones(tenant_id: TenantDep, session: SessionDep) -> list[dict[str, Any]]:
    """The registry, then the caller's fine-tuned models, usable as backbones under ``model:<id>``."""
    from workers.models import finetuned_backbones

    return [describe_backbone(spec) for spec in list_backbones()] + finetuned_backbones(session, tenant_id)


@router.get("/v1/backbones/{name}")
def backbone(name: str, _: TenantDep) -> dict[str, Any]:
    return describe_backbone(get_backbone(name))


@router.post("/v1/backbones/{name}/classify")
async def classify(
    name: str,
    _: TenantDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File()],
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
) -> dict[str, Any]:
    payload = await read_files(files, settings)
    return await run_in_threadpool(inference.classify_imagenet, name, payload, top_k)


@router.post("/v1/embed")
async def embed(
    tenant_id: TenantDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File()],
    backbone: Annotated[str, Form()] = "efficientnet_lite0",
    allow_random_weights: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    payload = await read_files(files, settings)
    return await run_in_threadpool(inference.embed, tenant_id, backbone, payload, allow_random_weights)
