"""/v1/backbones, /v1/embed: the registry and scenario 1 (a pretrained network used as it is)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from core import models as mdl
from core.features import MODEL_PREFIX
from core.pagination import sorted_page
from service.deps import SessionDep, SettingsDep, TenantDep
from service.pagination import PageDep, set_link_header
from service.schemas import BackboneCard, ClassifyOut, EmbedOut
from service.uploads import read_files
from workers.backbones import describe_backbone, get_backbone, list_backbones
from workers.runtime import inference

router = APIRouter(tags=["backbones"])


@router.get("/v1/backbones", response_model=list[BackboneCard], response_model_exclude_none=True)
def backbones(
    request: Request, response: Response, tenant_id: TenantDep, session: SessionDep, page: PageDep
) -> list[BackboneCard]:
    """The registry and the caller's fine-tuned models, usable as backbones under ``model:<id>``: one page,
    by name; the next page's URL is in the ``Link`` header."""
    cards = [BackboneCard(**describe_backbone(spec)) for spec in list_backbones()]
    for model in mdl.finetuned_models(session, tenant_id):
        spec = get_backbone(model.backbone)
        card = describe_backbone(spec) | {"name": f"{MODEL_PREFIX}{model.id}", "weights": "fine-tuned"}
        cards.append(
            BackboneCard(
                **card | {"pretrained": True, "family": "fine-tuned", "base": spec.name, "dataset_id": model.dataset_id}
            )
        )
    result = sorted_page(cards, lambda card: card.name, page.limit, page.cursor)
    set_link_header(request, response, result.next_cursor)
    return result.items


@router.get("/v1/backbones/{name}", response_model=BackboneCard, response_model_exclude_none=True)
def backbone(name: str, _: TenantDep) -> BackboneCard:
    return BackboneCard(**describe_backbone(get_backbone(name)))


@router.post("/v1/backbones/{name}/classify", response_model=ClassifyOut, response_model_exclude_none=True)
async def classify(
    name: str,
    _: TenantDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File()],
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
) -> ClassifyOut:
    payload = await read_files(files, settings)
    return await run_in_threadpool(inference.classify_imagenet, name, payload, top_k)


@router.post("/v1/embed", response_model=EmbedOut, response_model_exclude_none=True)
async def embed(
    tenant_id: TenantDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File()],
    backbone: Annotated[str, Form()] = "efficientnet_lite0",
    allow_random_weights: Annotated[bool, Form()] = False,
) -> EmbedOut:
    payload = await read_files(files, settings)
    return await run_in_threadpool(inference.embed, tenant_id, backbone, payload, allow_random_weights)
