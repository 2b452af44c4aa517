"""Dependencies shared by the routers: a database session per request, the caller's tenant, settings.

Authentication uses its own short session that is closed before the route runs and returns plain values
(the tenant id and the key's scope) only, so a route that waits (an event stream, a prediction in the
micro-batcher) holds no database connection; routes that need the database ask for ``SessionDep`` themselves.
A valid key is remembered for ``auth_cache_s`` (one second), so a busy predict path makes no query per
request; a revoked key stops working within that time in every API process.

Every route declares which keys it takes: ``TenantDep`` needs a key of scope ``all``; ``PredictTenantDep``,
declared by the prediction routes only, takes a key of any scope."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from core.db import session_scope
from core.errors import ForbiddenScope
from core.settings import Settings, get_settings
from core.tenancy import Caller, authenticate, key_digest
from service.ratelimit import check_rate, check_rate_async


def get_session() -> Iterator[Session]:
    with session_scope() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def _settings() -> Settings:
    """The settings, on the event loop: FastAPI runs a plain ``def`` dependency in its thread pool, a hop
    every request of the predict path would pay for a cached object."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]


class KeyCache:
    """Valid keys by digest → (caller, monotonic expiry), for ``settings.auth_cache_s``. Only keys that
    authenticated are kept, so junk tokens cannot grow it; past ``max_entries`` the oldest go first."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[str, tuple[Caller, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def peek(self, token: str, ttl_s: float) -> Caller | None:
        """The cached caller of a valid ``token`` still within its time, else None; never a query."""
        if ttl_s <= 0:
            return None
        with self._lock:
            hit = self._entries.get(key_digest(token))
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def get(self, token: str, ttl_s: float) -> Caller:
        if ttl_s <= 0:
            return _authenticate_in_db(token)
        cached = self.peek(token, ttl_s)
        if cached is not None:
            return cached
        digest, now = key_digest(token), time.monotonic()
        caller = _authenticate_in_db(token)
        with self._lock:
            self._entries[digest] = (caller, now + ttl_s)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return caller

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


KEYS = KeyCache()


def _authenticate_in_db(token: str | None) -> Caller:
    with session_scope() as session:
        return authenticate(session, token)


def _authenticate(token: str | None) -> Caller:
    if not token:
        return _authenticate_in_db(token)  # the one 401 message
    return KEYS.get(token, get_settings().auth_cache_s)


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def get_caller(request: Request) -> Caller:
    """The caller's tenant and key scope (401 otherwise), within the tenant's rate limit (429 otherwise)."""
    caller = _authenticate(bearer_token(request))
    check_rate(caller.tenant_id)
    return caller


def require_any_key(request: Request) -> None:
    """A valid key of any scope (401 otherwise), outside the tenants' rate limits: a metrics scraper."""
    _authenticate(bearer_token(request))


def get_tenant_id(request: Request) -> str:
    """The caller's tenant, for a key of scope ``all``; a narrower key is a 403 that says what it needs."""
    caller = get_caller(request)
    if caller.scope != "all":
        raise ForbiddenScope(
            f"this API key's scope is {caller.scope!r}, which allows only POST /v1/models/{{id}}/predict and"
            f" POST /v1/aliases/{{name}}/predict; {request.method} {request.url.path} needs a key of scope 'all'"
            " (tlserve keys create --tenant NAME)"
        )
    return caller.tenant_id


async def get_predict_tenant_id(request: Request) -> str:
    """The caller's tenant, for a key of any scope: the prediction routes. On the event loop: a key in the
    cache and the rate check (asyncio Redis, or memory) cost no trip to the thread pool; only a key to look
    up in the database goes there."""
    token = bearer_token(request)
    caller = KEYS.peek(token, get_settings().auth_cache_s) if token else None
    if caller is None:
        caller = await run_in_threadpool(_authenticate, token)
    await check_rate_async(caller.tenant_id)
    return caller.tenant_id


TenantDep = Annotated[str, Depends(get_tenant_id)]
PredictTenantDep = Annotated[str, Depends(get_predict_tenant_id)]
