"""A real tlserve deployment in miniature: a Celery worker process on the real Redis broker and the API
server process, sharing a data folder and a database (SQLite file or the real PostgreSQL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import drop_postgres_database, make_postgres_database

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TLSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Deployment:
    env: dict[str, str]
    data_dir: Path
    base_url: str
    api_key: str
    logs: Path
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    worker_env: dict[str, str] | None = None  # the workers' environment where it differs from the API's

    def start_worker(self, concurrency: int = 1) -> subprocess.Popen:
        log = (self.logs / f"worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--queues", "cpu,gpu", "--concurrency", str(concurrency)],
            env=self.worker_env or self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker and its pool children at once, as the OOM killer or a power cut would."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60)

    def stop(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def dump_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.logs.glob("*.log")))


def _run(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _redis_reachable() -> bool:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return True
    except redis.RedisError:
        return False


def wait_until(condition, timeout: float, what: str, every: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll ``condition()`` (a probe of another process: HTTP, a database row, /proc) until it returns something
    truthy, and return that; ``timeout`` only ends a hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)  # polling another process's state, not synchronising this test's own logic
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


RECOVERY = ROOT / "test-artifacts" / "recovery.json"


def record_recovery(name: str, seconds: float) -> None:
    """Recovery times of the fault tests, kept for the record in ``test-artifacts/`` (never asserted)."""
    import json

    RECOVERY.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RECOVERY.read_text()) if RECOVERY.exists() else {}
    data[name] = round(seconds, 1)
    RECOVERY.write_text(json.dumps(data, indent=2, sort_keys=True))


@contextmanager
def running_deployment(
    root: Path,
    db_url: str,
    broker_url: str,
    *,
    worker: bool = True,
    extra_env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    """Migrate, make a key, start the API process (and one worker) under default settings; stop them after.

    ``extra_env`` is added to every process's environment; ``worker_env`` (e.g. another data folder) to the
    workers' only."""
    env = {
        **os.environ,
        "TLSERVE_DATA_DIR": str(root / "data"),
        "TLSERVE_DATABASE_URL": db_url,
        "TLSERVE_BROKER_URL": broker_url,
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    _run(["migrate"], env)
    key = _run(["keys", "create", "--tenant", "acme"], env).strip().splitlines()[-1]
    port = _free_port()
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    dep = Deployment(env=env, data_dir=root / "data", base_url=f"http://127.0.0.1:{port}", api_key=key, logs=logs)
    if worker_env:
        dep.worker_env = {**env, **worker_env}
    dep.api = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=(logs / "api.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{dep.base_url}/healthz", timeout=2).status_code in (200, 503):
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or dep.api.poll() is not None:
            dep.stop()
            pytest.fail(f"the API did not start:\n{dep.dump_logs()}")
        time.sleep(0.2)  # polling a readiness probe of a separate process, not synchronising test logic
    if worker:
        dep.start_worker()
    try:
        yield dep
    finally:
        dep.stop()


@pytest.fixture
def postgres_url(postgres_available: bool) -> Iterator[str]:
    """A fresh database on the real PostgreSQL for one test, dropped after it."""
    if not postgres_available:
        pytest.skip("PostgreSQL not reachable")
    url, name = make_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(name)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if not _redis_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"Redis is not reachable at {REDIS_URL}; CI must run the integration tests")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    root = tmp_path_factory.mktemp(f"deploy-{request.param}")
    pg_name = None
    if request.param == "postgres":
        if not request.getfixturevalue("postgres_available"):
            pytest.skip("PostgreSQL not reachable")
        db_url, pg_name = make_postgres_database()
    else:
        db_url = f"sqlite:///{root / 'tlserve.db'}"
    try:
        with running_deployment(root, db_url, REDIS_URL) as dep:
            yield dep
    finally:
        if pg_name:
            drop_postgres_database(pg_name)
