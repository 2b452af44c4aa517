"""Aliases: a tenant's stable names for models. Repointing is one row update, so every API process serves
the new model from its next request (the alias is resolved per request; the model's predictor is cached)."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import models as mdl
from core.errors import InvalidInput, NotFound
from core.pagination import DEFAULT_LIMIT, Page, keyset_page
from core.tables import Alias, utcnow

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidInput(
            f"alias {name!r}: use 1 to 64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def get_alias(session: Session, tenant_id: str, name: str) -> Alias:
    alias = session.scalar(select(Alias).where(Alias.tenant_id == tenant_id, Alias.name == name))
    if alias is None:
        raise NotFound(f"no alias {name!r}")
    return alias


def list_aliases(
    session: Session, tenant_id: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Page[Alias]:
    """A page of the tenant's aliases by name."""
    stmt = select(Alias).where(Alias.tenant_id == tenant_id)
    return keyset_page(session, stmt, [Alias.name], limit, cursor)


def point(session: Session, tenant_id: str, name: str, model_id: str) -> tuple[Alias, bool]:
    """Create the alias or repoint it to ``model_id`` (a ready model of the tenant). Returns (alias, created)."""
    check_name(name)
    mdl.ready_model(session, tenant_id, model_id)
    alias = session.scalar(select(Alias).where(Alias.tenant_id == tenant_id, Alias.name == name).with_for_update())
    if alias is not None:
        alias.model_id, alias.updated_at = model_id, utcnow()
        return alias, False
    alias = Alias(tenant_id=tenant_id, name=name, model_id=model_id)
    try:
        with session.begin_nested():
            session.add(alias)
    except IntegrityError:  # created by a concurrent request: repoint that one
        alias = get_alias(session, tenant_id, name)
        alias.model_id, alias.updated_at = model_id, utcnow()
        return alias, False
    return alias, True


def resolve(session: Session, tenant_id: str, name: str) -> str:
    """The model id an alias points to now."""
    return get_alias(session, tenant_id, name).model_id


def delete_alias(session: Session, tenant_id: str, name: str) -> None:
    session.delete(get_alias(session, tenant_id, name))
