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
        assert (await batcher.submit("m", np.ones((1, 1)), counting) == 1).all()  # the model serves again

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


def test_rate_limits_hold_across_processes_through_redis() -> None:
    import redis
    from limits.storage import storage_from_string

    from service.ratelimit import TenantLimiter

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError:
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
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
