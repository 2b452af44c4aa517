"""Dependencies shared by the routers: a database session per request, the caller's tenant, settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from core.db import session_scope
from core.settings import Settings, get_settings
from core.tenancy import authenticate


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_tenant_id(request: Request, session: SessionDep) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return authenticate(session, token.strip() if scheme.lower() == "bearer" else None)


TenantDep = Annotated[str, Depends(get_tenant_id)]
