"""Issue 10, item 4: backpressure and rate limits answer at once, in the error contract.

The micro-batcher's queue per model is bounded and has a deadline (503 ``overloaded`` + Retry-After);
per-tenant rate limits (``limits``) count in Redis across API processes, answer 429 ``rate_limited`` +
Retry-After, and fail open when Redis is down."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.errors import Overloaded
from tests.conftest import reset_caches
from tests.helpers import auth

REDIS_URL = os.environ.get("TLSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def _blocked_runner() -> tuple[threading.Event, threading.Event, object]:
    started, release = threading.Event(), threading.Event()

    def runner(x: np.ndarray) -> np.ndarray:
        started.set()
        release.wait(60)
        return x

    return started, release, runner


def test_a_full_model_queue_is_shed_at_once() -> None:
    from service.batching import MicroBatcher

    batcher = MicroBatcher(max_batch=4, queue_size=3, deadline_s=60)
    started, release, runner = _blocked_runner()

    async def main() -> None:
        running = asyncio.ensure_future(batcher.submit("m", np.zeros((1, 1)), runner))
        await asyncio.to_thread(started.wait, 60)  # the first batch is in the engine and holds it
        waiting = [asyncio.ensure_future(batcher.submit("m", np.full((1, 1), i), runner)) for i in range(3)]
        await asyncio.sleep(0)  # let the three enqueue (one loop turn, not a wait for time)
        assert batcher.waiting_rows("m") == 3
        with pytest.raises(Overloaded) as shed:
            await batcher.submit("m", np.zeros((1, 1)), runner)
        assert shed.value.status_code == 503 and shed.value.code == "overloaded" and shed.value.retry_after >= 1
        release.set()
        outs = await asyncio.gather(running, *waiting)
        assert [int(o[0, 0]) for o in outs] == [0, 0, 1, 2]

    asyncio.run(main())
    batcher.close()


def test_a_request_past_its_deadline_is_shed_and_its_rows_are_skipped() -> None:
    from service.batching import MicroBatcher

    batcher = MicroBatcher(max_batch=4, queue_size=100, deadline_s=0.05)
    started, release, runner = _blocked_runner()
    seen: list[int] = []

    def counting(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        return x

    async def main() -> None:
        running = asyncio.ensure_future(batcher.submit("m", np.zeros((1, 1)), runner))
        await asyncio.to_thread(started.wait, 60)
        with pytest.raises(Overloaded, match="not ready within"):
            await batcher.submit("m", np.zeros((2, 1)), counting)  # waits behind a batch that never ends
        release.set()
        with pytest.raises(Overloaded):
            await running  # that one too was past its deadline
        batcher.deadline_s = 60  # the model serves again (a loaded machine may take more than 50 ms to answer)
        assert (await batcher.submit("m", np.ones((1, 1)), counting) == 1).all()

    asyncio.run(main())
    assert seen == [1]  # the shed request's two rows were never computed
    batcher.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rate_limit_answers_429_with_retry_after(db: str, api_key: str, other_api_key: str, monkeypatch) -> None:
    from service.app import create_app

    monkeypatch.setenv("TLSERVE_RATE_LIMIT", "3/minute")
    reset_caches()
    with TestClient(create_app()) as client:
        for _ in range(3):
            assert client.get("/v1/datasets", headers=auth(api_key)).status_code == 200
        resp = client.get("/v1/datasets", headers=auth(api_key))
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert client.get("/v1/datasets", headers=auth(other_api_key)).status_code == 200  # per tenant


def test_the_default_limits_are_far_above_one_busy_user(db: str, api_key: str) -> None:
    from service.app import create_app

    with TestClient(create_app()) as client:
        assert all(client.get("/v1/datasets", headers=auth(api_key)).status_code == 200 for _ in range(150))


def _require_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        pytest.skip(f"Redis not reachable at {REDIS_URL}")


def test_rate_limits_hold_across_processes_through_redis() -> None:
    from limits.storage import storage_from_string

    from service.ratelimit import TenantLimiter

    _require_redis()
    tenant = f"tn_{uuid.uuid4().hex[:12]}"
    # two API processes: two limiters, each with its own connection, on the same Redis
    a = TenantLimiter("4/minute", storage_from_string(REDIS_URL, key_prefix="tlserve-rate-test"))
    b = TenantLimiter("4/minute", storage_from_string(REDIS_URL, key_prefix="tlserve-rate-test"))
    a.check(tenant)
    a.check(tenant)
    b.check(tenant)
    b.check(tenant)
    with pytest.raises(Exception) as refused:
        a.check(tenant)
    assert getattr(refused.value, "code", None) == "rate_limited"


def test_rate_limits_fail_open_when_redis_is_down(db: str, api_key: str, monkeypatch) -> None:
    from service.app import create_app

    monkeypatch.setenv("TLSERVE_RATE_LIMIT", "1/minute")
    monkeypatch.setenv("TLSERVE_RATE_LIMIT_STORAGE_URL", f"redis://127.0.0.1:{_closed_port()}/0")
    reset_caches()
    with TestClient(create_app()) as client:
        assert all(client.get("/v1/datasets", headers=auth(api_key)).status_code == 200 for _ in range(3))


def test_a_rate_limit_that_does_not_parse_is_refused_at_start(monkeypatch) -> None:
    from pydantic import ValidationError

    from core.settings import Settings

    monkeypatch.setenv("TLSERVE_RATE_LIMIT", "lots/sometimes")
    with pytest.raises(ValidationError, match="rate_limit"):
        Settings()


def test_the_predict_routes_count_on_the_loop_against_the_same_limit(db: str, api_key: str, monkeypatch) -> None:
    """The prediction routes check the rate on the event loop; they count against the same per-tenant limit
    as every other route, and answer 429 with Retry-After past it (before any model lookup)."""
    from service.app import create_app

    monkeypatch.setenv("TLSERVE_RATE_LIMIT", "3/minute")
    reset_caches()
    files = [("files", ("a.png", b"not a png", "image/png"))]
    with TestClient(create_app()) as client:
        assert client.get("/v1/datasets", headers=auth(api_key)).status_code == 200
        for _ in range(2):
            assert client.post("/v1/models/md_nope/predict", headers=auth(api_key), files=files).status_code == 404
        resp = client.post("/v1/models/md_nope/predict", headers=auth(api_key), files=files)
        assert resp.status_code == 429, resp.text
        assert resp.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
        assert client.get("/v1/datasets", headers=auth(api_key)).status_code == 429  # one counter


def test_a_cached_key_takes_the_predict_path_through_no_thread(db: str, api_key: str, monkeypatch) -> None:
    from service import deps
    from service.app import create_app

    lookups: list[str | None] = []
    real = deps.run_in_threadpool

    async def counting(fn, *args):  # type: ignore[no-untyped-def]
        lookups.append(args[0] if args else None)
        return await real(fn, *args)

    monkeypatch.setattr(deps, "run_in_threadpool", counting)
    deps.KEYS.clear()
    files = [("files", ("a.png", b"not a png", "image/png"))]
    with TestClient(create_app()) as client:
        for _ in range(3):
            assert client.post("/v1/models/md_nope/predict", headers=auth(api_key), files=files).status_code == 404
        bad = client.post("/v1/models/md_nope/predict", headers=auth("tls_000000000000_nothing"), files=files)
        assert bad.status_code == 401
        assert client.post("/v1/models/md_nope/predict", files=files).status_code == 401
    assert lookups == [api_key, "tls_000000000000_nothing", None]  # the key's first use only, then junk
    deps.KEYS.clear()


def _async_limiter_on(url: str, rates: str):  # type: ignore[no-untyped-def]
    from limits.storage import storage_from_string

    from service.ratelimit import AsyncTenantLimiter

    storage = storage_from_string(
        f"async+{url}", key_prefix="tlserve-rate-test", implementation="redispy", socket_connect_timeout=0.5
    )
    return AsyncTenantLimiter(rates, storage)


def test_the_loop_and_the_thread_pool_share_the_redis_counters() -> None:
    from limits.storage import storage_from_string

    from core.errors import RateLimited
    from service.ratelimit import TenantLimiter

    _require_redis()
    tenant = f"tn_{uuid.uuid4().hex[:12]}"
    threaded = TenantLimiter("4/minute", storage_from_string(REDIS_URL, key_prefix="tlserve-rate-test"))
    threaded.check(tenant)
    threaded.check(tenant)

    async def main() -> RateLimited:
        on_loop = _async_limiter_on(REDIS_URL, "4/minute")
        try:
            await on_loop.check(tenant)
            await on_loop.check(tenant)
            with pytest.raises(RateLimited) as refused:
                await on_loop.check(tenant)
            return refused.value
        finally:
            await on_loop.storage.bridge.storage.aclose()

    refused = asyncio.run(main())
    assert refused.status_code == 429 and 1 <= refused.retry_after <= 60
    with pytest.raises(RateLimited):
        threaded.check(tenant)


def test_the_loop_limiter_fails_open_when_redis_is_down() -> None:
    from service import ratelimit

    async def main() -> list[bool]:
        limiter = _async_limiter_on(f"redis://127.0.0.1:{_closed_port()}/0", "1/minute")
        answered = []
        for _ in range(3):
            await limiter.check("tn_any")  # never refused
            answered.append(limiter._outage.down())
        return answered

    assert asyncio.run(main()) == [True, True, True]  # the first error turned the checks off for a while
    assert ratelimit.OUTAGE_BACKOFF_S > 0


def test_the_predict_routes_limit_through_redis_on_the_loop(db: str, api_key: str, monkeypatch) -> None:

    from service import ratelimit
    from service.app import create_app

    _require_redis()
    monkeypatch.setenv("TLSERVE_RATE_LIMIT", "3/minute")  # the tenant is new: so are its counters
    monkeypatch.setenv("TLSERVE_RATE_LIMIT_STORAGE_URL", REDIS_URL)
    reset_caches()
    limit = 3
    files = [("files", ("a.png", b"not a png", "image/png"))]
    with TestClient(create_app()) as client:
        codes = [
            client.post("/v1/models/md_nope/predict", headers=auth(api_key), files=files).status_code
            for _ in range(limit + 1)
        ]
        assert len(ratelimit._ASYNC_LIMITERS) >= 1  # counted by the loop's own Redis client
    assert codes == [404] * limit + [429]


def test_a_lone_request_runs_at_once_and_later_arrivals_go_together() -> None:
    """No timer and no queue for a caller that finds its model idle; callers that arrive while its forward
    pass runs wait and are merged into the next batch."""
    from service.batching import MicroBatcher

    batcher = MicroBatcher(max_batch=8, deadline_s=60)
    started, release, blocked = _blocked_runner()
    sizes: list[int] = []

    def runner(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return blocked(x) if len(sizes) == 1 else x

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit("m", np.zeros((1, 1)), runner))
        await asyncio.to_thread(started.wait, 60)  # on the engine without waiting for company
        assert batcher.waiting_rows("m") == 0
        later = [asyncio.ensure_future(batcher.submit("m", np.full((1, 1), i), runner)) for i in range(1, 4)]
        await asyncio.sleep(0)  # let the three enqueue (one loop turn, not a wait for time)
        assert batcher.waiting_rows("m") == 3
        release.set()
        outs = await asyncio.gather(first, *later)
        assert [int(o[0, 0]) for o in outs] == [0, 1, 2, 3]
        assert (await batcher.submit("m", np.full((1, 1), 7), runner) == 7).all()  # idle again: alone

    asyncio.run(main())
    assert sizes == [1, 3, 1] and batcher.batches_run == 3 and batcher.waiting_rows("m") == 0
    batcher.close()
