"""Tenants and API keys. A key is ``tls_<prefix>_<secret>``; only its SHA-256 is stored, and the check
compares digests in constant time. Keys are 256-bit random, so a plain hash (no slow KDF) is enough.

Each key has a scope: ``all`` (every route) or ``predict`` (the prediction routes only, for an application
that must do nothing else); the service checks it per route."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InvalidInput, NotFound, Unauthorized
from core.tables import ApiKey, Tenant, utcnow

KEY_PREFIX = "tls"
SCOPES = ("all", "predict")


class Caller(NamedTuple):
    """Who a valid key belongs to, as plain values (nothing bound to the session that found them)."""

    tenant_id: str
    scope: str


def key_digest(key: str) -> str:
    """What is stored of a key (its SHA-256), and what the API's cache of valid keys is keyed by."""
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("tenant name must be 1 to 100 characters")
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, tenant_name: str, scope: str = "all") -> str:
    """Create (or reuse) the tenant and a new key of ``scope`` for it; returns the key, shown only this once."""
    if scope not in SCOPES:
        raise InvalidInput(f"unknown API key scope {scope!r}: use one of {', '.join(SCOPES)}")
    tenant = get_or_create_tenant(session, tenant_name)
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=key_digest(key), scope=scope))
    session.flush()
    return key


def authenticate(session: Session, key: str | None) -> Caller:
    """The tenant id and scope of a valid key, else ``Unauthorized`` (one message for every failure)."""
    failure = Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")
    if not key:
        raise failure
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != KEY_PREFIX:
        raise failure
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1], ApiKey.revoked_at.is_(None)))
    if row is None or not hmac.compare_digest(row.key_hash, key_digest(key)):
        raise failure
    return Caller(row.tenant_id, row.scope)


def list_api_keys(session: Session, tenant_name: str | None = None) -> list[dict[str, object]]:
    """Every key's public part (never its secret or hash), oldest first; optionally of one tenant."""
    query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.created_at)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name.strip())
    return [
        {
            "id": key.id,
            "tenant": name,
            "prefix": f"{KEY_PREFIX}_{key.prefix}_",
            "scope": key.scope,
            "created_at": key.created_at.isoformat() if key.created_at else None,
            "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        }
        for key, name in session.execute(query)
    ]


def revoke_api_key(session: Session, key_ref: str) -> ApiKey:
    """Revoke a key by its id (``key_...``) or its public prefix (``tls_<prefix>_`` or the bare prefix);
    it stops authenticating at once. Revoking a revoked key keeps its first revocation time."""
    ref = key_ref.strip()
    parts = ref.split("_")
    prefix = parts[1] if len(parts) >= 2 and parts[0] == KEY_PREFIX else ref
    row = session.scalar(select(ApiKey).where((ApiKey.id == ref) | (ApiKey.prefix == prefix)))
    if row is None:
        raise NotFound(f"no API key {key_ref!r}: give a key id (key_...) or prefix from 'tlserve keys list'")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
