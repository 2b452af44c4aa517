"""The API's key cache: a valid key is checked against the database once per ``auth_cache_s`` per process, a
revoked key stops working when its entry expires, junk tokens are never kept (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest

from core.db import session_scope
from core.errors import Unauthorized
from core.tenancy import revoke_api_key
from service import deps


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The cache's monotonic clock, moved by the test."""
    now = [1000.0]
    monkeypatch.setattr(deps.time, "monotonic", lambda: now[0])
    deps.KEYS.clear()
    yield now
    deps.KEYS.clear()


def test_a_revoked_key_works_until_its_entry_expires(api_key: str, clock: list[float]) -> None:
    tenant = deps._authenticate(api_key).tenant_id
    with session_scope() as s:
        revoke_api_key(s, api_key.rsplit("_", 1)[0] + "_")
    clock[0] += 0.9
    assert deps._authenticate(api_key).tenant_id == tenant  # remembered: no query
    clock[0] += 0.2  # past the default second
    with pytest.raises(Unauthorized):
        deps._authenticate(api_key)


def test_without_a_cache_revocation_is_immediate(api_key: str, clock: list[float], monkeypatch) -> None:
    from core.settings import reset_settings

    monkeypatch.setenv("TLSERVE_AUTH_CACHE_S", "0")
    reset_settings()
    deps._authenticate(api_key)
    with session_scope() as s:
        revoke_api_key(s, api_key.rsplit("_", 1)[0] + "_")
    with pytest.raises(Unauthorized):
        deps._authenticate(api_key)


def test_junk_tokens_are_not_kept_and_the_cache_is_bounded(api_key: str, other_api_key: str, clock) -> None:
    for i in range(50):
        with pytest.raises(Unauthorized):
            deps._authenticate(f"tls_{i:012x}_nothing")
    cache = deps.KeyCache(max_entries=1)
    cache.get(api_key, 1.0)
    cache.get(other_api_key, 1.0)
    assert len(deps.KEYS._entries) == 0 and list(cache._entries) == [deps.key_digest(other_api_key)]
