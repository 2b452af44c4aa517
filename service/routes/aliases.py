"""/v1/aliases: stable names for models, so an application's code does not change when a model is retrained."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from core import aliases
from core.db import session_scope
from service.deps import PredictTenantDep, SessionDep, SettingsDep, TenantDep
from service.pagination import PageDep, set_link_header
from service.routes.models import TTAForm, predict_files
from service.schemas import AliasOut, AliasRequest, PredictOut

router = APIRouter(prefix="/v1/aliases", tags=["aliases"])


@router.get("", response_model=list[AliasOut])
def list_aliases(
    request: Request, response: Response, session: SessionDep, tenant_id: TenantDep, page: PageDep
) -> list[AliasOut]:
    """One page of aliases by name; the next page's URL is in the ``Link`` header."""
    result = aliases.list_aliases(session, tenant_id, page.limit, page.cursor)
    set_link_header(request, response, result.next_cursor)
    return [AliasOut.from_row(a) for a in result.items]


@router.get("/{name}", response_model=AliasOut)
def get_alias(name: str, session: SessionDep, tenant_id: TenantDep) -> AliasOut:
    return AliasOut.from_row(aliases.get_alias(session, tenant_id, name))


@router.put("/{name}", response_model=AliasOut, responses={201: {"model": AliasOut}})
def put_alias(name: str, body: AliasRequest, session: SessionDep, tenant_id: TenantDep, response: Response) -> AliasOut:
    """Create the alias (201) or repoint it (200), atomically: the next prediction uses the new model."""
    alias, created = aliases.point(session, tenant_id, name, body.model_id)
    session.commit()
    response.status_code = 201 if created else 200
    return AliasOut.from_row(alias)


@router.delete("/{name}", status_code=204)
def delete_alias(name: str, session: SessionDep, tenant_id: TenantDep) -> None:
    aliases.delete_alias(session, tenant_id, name)
    session.commit()


def _resolve(tenant_id: str, name: str) -> str:
    with session_scope() as session:  # a short session: none is held while the images are read and predicted
        return aliases.resolve(session, tenant_id, name)


@router.post("/{name}/predict", response_model=PredictOut, response_model_exclude_none=True)
async def predict(
    name: str,
    request: Request,
    tenant_id: PredictTenantDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File()],
    top_k: Annotated[int, Form(ge=1, le=100)] = 3,
    tta: TTAForm = None,
) -> dict[str, Any]:
    """Predict with the model the alias points to now; ``model_id`` in the answer says which one."""
    model_id = await run_in_threadpool(_resolve, tenant_id, name)
    return await predict_files(request, tenant_id, model_id, files, top_k, settings, tta)
