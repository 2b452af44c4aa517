"""/v1/usage: a tenant's counts and limits."""

from __future__ import annotations

from fastapi import APIRouter, Request

from core import usage
from service.deps import SessionDep, TenantDep
from service.schemas import UsageOut

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("", response_model=UsageOut)
def get_usage(request: Request, session: SessionDep, tenant_id: TenantDep) -> UsageOut:
    counts = usage.usage(session, tenant_id)
    return UsageOut(**counts, event_streams=request.app.state.streams.count(tenant_id))
