"""Per-tenant rate limits with the ``limits`` library. Counters live in Redis (the broker's, or
``TLSERVE_RATE_LIMIT_STORAGE_URL``) so that a limit holds across API processes; in memory when jobs run
in-process. If Redis cannot be reached the limits fail open: a limiter outage never refuses a request."""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from core.errors import RateLimited
from core.settings import get_settings

log = logging.getLogger(__name__)

OUTAGE_BACKOFF_S = 5.0  # after a storage error, skip the check this long instead of paying a timeout per request


class TenantLimiter:
    def __init__(self, rates: str, storage: Storage) -> None:
        self.items: list[RateLimitItem] = parse_many(rates) if rates.strip() else []
        self.limiter = SlidingWindowCounterRateLimiter(storage)
        self._down_until = 0.0
        self._lock = threading.Lock()

    def check(self, tenant_id: str) -> None:
        """Count one request of ``tenant_id``; ``RateLimited`` with the seconds to wait when over a limit."""
        if not self.items or time.monotonic() < self._down_until:
            return
        try:
            for item in self.items:
                if not self.limiter.hit(item, "tenant", tenant_id):
                    reset = self.limiter.get_window_stats(item, "tenant", tenant_id).reset_time
                    raise RateLimited(
                        f"rate limit of {item} per tenant exceeded; retry later",
                        retry_after=max(1, int(reset - time.time() + 0.999)),
                    )
        except RateLimited:
            raise
        except Exception as exc:  # the storage is down: fail open, and look again in a few seconds
            with self._lock:
                self._down_until = time.monotonic() + OUTAGE_BACKOFF_S
            log.warning(
                "rate limiter storage unavailable (%s); not limiting for %ss", type(exc).__name__, OUTAGE_BACKOFF_S
            )


@lru_cache(maxsize=4)
def _limiter(rates: str, storage_url: str) -> TenantLimiter:
    if storage_url.startswith(("redis://", "rediss://")):
        storage: Storage = storage_from_string(
            storage_url, key_prefix="tlserve-rate", socket_connect_timeout=0.5, socket_timeout=0.5
        )
    else:
        storage = MemoryStorage()
    return TenantLimiter(rates, storage)


def rate_limit_storage_url() -> str:
    settings = get_settings()
    if settings.rate_limit_storage_url:
        return settings.rate_limit_storage_url
    return settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://")) else "memory://"


def check_rate(tenant_id: str) -> None:
    _limiter(get_settings().rate_limit, rate_limit_storage_url()).check(tenant_id)
