"""Tenants and API keys. A key is ``tls_<prefix>_<secret>``; only its SHA-256 is stored, and the check
compares digests in constant time. Keys are 256-bit random, so a plain hash (no slow KDF) is enough."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InvalidInput, Unauthorized
from core.tables import ApiKey, Tenant

KEY_PREFIX = "tls"


def _digest(key: str) -> str:
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


def create_api_key(session: Session, tenant_name: str) -> str:
    """Create (or reuse) the tenant and a new key for it; returns the key, shown only this once."""
    tenant = get_or_create_tenant(session, tenant_name)
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=_digest(key)))
    session.flush()
    return key


def authenticate(session: Session, key: str | None) -> str:
    """The tenant id of a valid key, else ``Unauthorized`` (one message for every failure)."""
    failure = Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'")
    if not key:
        raise failure
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != KEY_PREFIX:
        raise failure
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1], ApiKey.revoked_at.is_(None)))
    if row is None or not hmac.compare_digest(row.key_hash, _digest(key)):
        raise failure
    return row.tenant_id
