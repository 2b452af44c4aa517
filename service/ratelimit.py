"""Per-tenant rate limits with the ``limits`` library. Counters live in Redis (the broker's, or
``TLSERVE_RATE_LIMIT_STORAGE_URL``) so that a limit holds across API processes; in memory when jobs run
in-process. If Redis cannot be reached the limits fail open: a limiter outage never refuses a request.

Two ways in, one set of counters: ``check_rate`` for the routes that run in the thread pool, and
``check_rate_async`` for the prediction routes, which count on the event loop (``limits.aio`` over
``redis.asyncio``, the same keys in the same Redis) so that a request of the predict path leaves the loop
for nothing but its decode and forward pass. In memory, both use the one in-process counter."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from functools import lru_cache

from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter as AsyncSlidingWindowCounterRateLimiter
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from core.errors import RateLimited
from core.settings import get_settings

log = logging.getLogger(__name__)

OUTAGE_BACKOFF_S = 5.0  # after a storage error, skip the check this long instead of paying a timeout per request
KEY_PREFIX = "tlserve-rate"
REDIS_OPTIONS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}


def _refusal(item: RateLimitItem, reset_time: float) -> RateLimited:
    return RateLimited(
        f"rate limit of {item} per tenant exceeded; retry later",
        retry_after=max(1, int(reset_time - time.time() + 0.999)),
    )


class _FailOpen:
    """The limiter's outage state: after a storage error, no checks for ``OUTAGE_BACKOFF_S``."""

    def __init__(self) -> None:
        self._down_until = 0.0
        self._lock = threading.Lock()

    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def failed(self, exc: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + OUTAGE_BACKOFF_S
        log.warning("rate limiter storage unavailable (%s); not limiting for %ss", type(exc).__name__, OUTAGE_BACKOFF_S)


class TenantLimiter:
    def __init__(self, rates: str, storage: Storage) -> None:
        self.items: list[RateLimitItem] = parse_many(rates) if rates.strip() else []
        self.limiter = SlidingWindowCounterRateLimiter(storage)
        self._outage = _FailOpen()

    def check(self, tenant_id: str) -> None:
        """Count one request of ``tenant_id``; ``RateLimited`` with the seconds to wait when over a limit."""
        if not self.items or self._outage.down():
            return
        try:
            for item in self.items:
                if not self.limiter.hit(item, "tenant", tenant_id):
                    raise _refusal(item, self.limiter.get_window_stats(item, "tenant", tenant_id).reset_time)
        except RateLimited:
            raise
        except Exception as exc:  # the storage is down: fail open, and look again in a few seconds
            self._outage.failed(exc)


class AsyncTenantLimiter:
    """``TenantLimiter`` on the event loop: the same strategy and keys, so both count the same requests."""

    def __init__(self, rates: str, storage: AsyncStorage) -> None:
        self.items: list[RateLimitItem] = parse_many(rates) if rates.strip() else []
        self.storage = storage
        self.limiter = AsyncSlidingWindowCounterRateLimiter(storage)
        self._outage = _FailOpen()

    async def check(self, tenant_id: str) -> None:
        if not self.items or self._outage.down():
            return
        try:
            for item in self.items:
                if not await self.limiter.hit(item, "tenant", tenant_id):
                    stats = await self.limiter.get_window_stats(item, "tenant", tenant_id)
                    raise _refusal(item, stats.reset_time)
        except RateLimited:
            raise
        except Exception as exc:
            self._outage.failed(exc)


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


@lru_cache(maxsize=4)
def _limiter(rates: str, storage_url: str) -> TenantLimiter:
    if _is_redis(storage_url):
        storage: Storage = storage_from_string(storage_url, key_prefix=KEY_PREFIX, **REDIS_OPTIONS)
    else:
        storage = MemoryStorage()
    return TenantLimiter(rates, storage)


# An asyncio Redis client belongs to the loop it was made on: one limiter per (loop, rates, storage).
_ASYNC_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], AsyncTenantLimiter]] = (
    weakref.WeakKeyDictionary()
)


def _async_limiter(rates: str, storage_url: str) -> AsyncTenantLimiter:
    per_loop = _ASYNC_LIMITERS.setdefault(asyncio.get_running_loop(), {})
    limiter = per_loop.get((rates, storage_url))
    if limiter is None:
        storage = storage_from_string(
            f"async+{storage_url}", key_prefix=KEY_PREFIX, implementation="redispy", **REDIS_OPTIONS
        )
        limiter = per_loop[(rates, storage_url)] = AsyncTenantLimiter(rates, storage)
    return limiter


def rate_limit_storage_url() -> str:
    settings = get_settings()
    if settings.rate_limit_storage_url:
        return settings.rate_limit_storage_url
    return settings.broker_url if _is_redis(settings.broker_url) else "memory://"


def check_rate(tenant_id: str) -> None:
    _limiter(get_settings().rate_limit, rate_limit_storage_url()).check(tenant_id)


async def check_rate_async(tenant_id: str) -> None:
    """``check_rate`` without leaving the event loop: Redis through its asyncio client; the in-memory
    counter (no I/O) directly."""
    rates, url = get_settings().rate_limit, rate_limit_storage_url()
    if _is_redis(url):
        await _async_limiter(rates, url).check(tenant_id)
    else:
        _limiter(rates, url).check(tenant_id)


async def close_async_limiters() -> None:
    """Close this loop's Redis connections of the rate limiter (at the API's shutdown)."""
    for limiter in _ASYNC_LIMITERS.pop(asyncio.get_running_loop(), {}).values():
        try:
            await limiter.storage.bridge.storage.aclose()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a connection already gone is closed enough
            log.debug("could not close the rate limiter's Redis client", exc_info=True)
