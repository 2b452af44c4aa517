"""Issue 10, item 4, across API processes: two ``tlserve api`` processes on one PostgreSQL and one Redis
share each tenant's rate limit (the counters live in Redis), answer 429 ``rate_limited`` with Retry-After
in the error contract, and leave other tenants alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import drop_postgres_database, make_postgres_database
from tests.helpers import auth
from tests.integration.conftest import REDIS_URL, ROOT, _free_port, _redis_reachable, _run

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

LIMIT = 6


def _start_api(env: dict[str, str], logs: Path, n: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=(logs / f"api-{n}.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code in (200, 503):
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # a readiness probe of another process, not synchronisation of test logic
    proc.kill()
    pytest.fail(f"API {n} did not start:\n{(logs / f'api-{n}.log').read_text()[-3000:]}")


@pytest.fixture
def two_apis(tmp_path: Path, postgres_available: bool) -> Iterator[tuple[list[str], str, str]]:
    if not _redis_reachable():
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    if not postgres_available:
        pytest.skip("PostgreSQL not reachable")
    db_url, pg_name = make_postgres_database()
    env = {
        **os.environ,
        "TLSERVE_DATA_DIR": str(tmp_path / "data"),
        "TLSERVE_DATABASE_URL": db_url,
        "TLSERVE_BROKER_URL": REDIS_URL,  # the rate limits count in the broker's Redis by default
        "TLSERVE_RATE_LIMIT": f"{LIMIT}/minute",
        "PYTHONUNBUFFERED": "1",
    }
    procs: list[subprocess.Popen] = []
    try:
        _run(["migrate"], env)
        key = _run(["keys", "create", "--tenant", "acme"], env).strip().splitlines()[-1]
        other = _run(["keys", "create", "--tenant", "globex"], env).strip().splitlines()[-1]
        bases = []
        for n in range(2):
            proc, base = _start_api(env, tmp_path, n)
            procs.append(proc)
            bases.append(base)
        yield bases, key, other
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        drop_postgres_database(pg_name)


def test_two_api_processes_share_one_rate_limit_per_tenant(two_apis: tuple[list[str], str, str]) -> None:
    (a, b), key, other = two_apis
    answers = []
    for i in range(LIMIT):  # alternate between the processes: each sees only half of the requests
        answers.append(httpx.get(f"{(a, b)[i % 2]}/v1/datasets", headers=auth(key), timeout=30).status_code)
    assert answers == [200] * LIMIT
    for base in (a, b):
        refused = httpx.get(f"{base}/v1/datasets", headers=auth(key), timeout=30)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert httpx.get(f"{a}/v1/datasets", headers=auth(other), timeout=30).status_code == 200  # per tenant


def test_the_predict_route_counts_against_the_same_limit_across_processes(
    two_apis: tuple[list[str], str, str],
) -> None:
    """The prediction routes count on the event loop (asyncio Redis), the others in the thread pool: one
    counter per tenant all the same, in every process."""
    (a, b), key, _ = two_apis
    files = [("files", ("x.png", b"not a png", "image/png"))]

    def predict(base: str) -> httpx.Response:
        return httpx.post(f"{base}/v1/models/md_nope/predict", headers=auth(key), files=files, timeout=30)

    def listing(base: str) -> int:
        return httpx.get(f"{base}/v1/datasets", headers=auth(key), timeout=30).status_code

    # a listing through one process, a prediction through the other, in turn
    answers = [predict(b).status_code if i % 2 else listing(a) for i in range(LIMIT)]
    assert answers == [200, 404] * (LIMIT // 2)
    for base in (a, b):
        refused = predict(base)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert listing(b) == 429
