"""Dependencies shared by the routers: a database session per request, the caller's tenant, settings.

Authentication uses its own short session that is closed before the route runs and returns the tenant id
only, so a route that waits (an event stream, a prediction in the micro-batcher) holds no database
connection; routes that need the database ask for ``SessionDep`` themselves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from core.db import session_scope
from core.settings import Settings, get_settings
from core.tenancy import authenticate
from service.ratelimit import check_rate


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _authenticate(token: str | None) -> str:
    with session_scope() as session:
        return authenticate(session, token)


def get_tenant_id(request: Request) -> str:
    """The caller's tenant (401 otherwise), within the tenant's rate limit (429 otherwise)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    tenant_id = _authenticate(token.strip() if scheme.lower() == "bearer" else None)
    check_rate(tenant_id)
    return tenant_id


TenantDep = Annotated[str, Depends(get_tenant_id)]
