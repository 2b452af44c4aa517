"""Listing and revoking API keys (``tlserve keys list|revoke``): the secret never shows, a revoked key stops
authenticating at once, the other keys keep working; each key has its scope (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from core.db import session_scope
from core.errors import InvalidInput, NotFound, Unauthorized
from core.tenancy import authenticate, create_api_key, list_api_keys, revoke_api_key


def test_list_shows_the_public_part_only(api_key: str, other_api_key: str) -> None:
    with session_scope() as s:
        rows = list_api_keys(s)
        mine = list_api_keys(s, "acme")
    assert [r["tenant"] for r in rows] == ["acme", "globex"]
    assert len(mine) == 1 and api_key.startswith(mine[0]["prefix"]) and mine[0]["revoked_at"] is None
    secret = api_key.split("_", 2)[2]
    assert all(secret not in str(v) for r in rows for v in r.values())


def test_a_revoked_key_stops_authenticating_and_others_keep_working(api_key: str, other_api_key: str) -> None:
    with session_scope() as s:
        acme_tenant = authenticate(s, api_key).tenant_id
        key_id = list_api_keys(s, "acme")[0]["id"]
        first = revoke_api_key(s, key_id).revoked_at
    with session_scope() as s:
        with pytest.raises(Unauthorized):
            authenticate(s, api_key)
        assert authenticate(s, other_api_key).tenant_id != acme_tenant
        again = revoke_api_key(s, key_id)  # revoking twice keeps the first time
        assert again.revoked_at is not None and again.revoked_at.replace(tzinfo=None) == first.replace(tzinfo=None)
        assert list_api_keys(s, "acme")[0]["revoked_at"] is not None


def test_revoke_by_public_prefix_and_unknown_keys(api_key: str) -> None:
    prefix = "_".join(api_key.split("_")[:2]) + "_"
    with session_scope() as s:
        assert revoke_api_key(s, prefix).revoked_at is not None
        with pytest.raises(NotFound, match="keys list"):
            revoke_api_key(s, "key_missing")
    with session_scope() as s, pytest.raises(Unauthorized):
        authenticate(s, api_key)


def test_keys_have_a_scope_that_authentication_returns(api_key: str) -> None:
    with session_scope() as s:
        predict_key = create_api_key(s, "acme", scope="predict")
        with pytest.raises(InvalidInput, match="all, predict"):
            create_api_key(s, "acme", scope="admin")
    with session_scope() as s:
        full, narrow = authenticate(s, api_key), authenticate(s, predict_key)
        assert [r["scope"] for r in list_api_keys(s, "acme")] == ["all", "predict"]
    assert full.scope == "all" and narrow.scope == "predict"
    assert full.tenant_id == narrow.tenant_id  # one tenant, two keys
