"""Shared by the benchmarks: the machine they ran on, an isolated tlserve environment, result files."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def isolated_env(broker: str = "memory://") -> Path:
    """Point tlserve at a fresh data folder and SQLite database, migrated."""
    data = Path(tempfile.mkdtemp(prefix="tlserve-bench-"))
    os.environ.update({"TLSERVE_DATA_DIR": str(data), "TLSERVE_BROKER_URL": broker})
    os.environ.pop("TLSERVE_DATABASE_URL", None)
    from core.migrate import upgrade
    from core.settings import reset_settings

    reset_settings()
    upgrade()
    return data


def code_version() -> dict[str, Any]:
    """The commit the figures come from, and whether the tree had uncommitted changes then."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    # Result files written by earlier benchmarks of the same `make bench` are output, not code.
    changed = git("status", "--porcelain", "--", ".", ":!benchmarks/results", ":!benchmarks/RESULTS.md")
    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(changed)}


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    context = {"machine": machine(), "code": code_version(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)}
    path.write_text(json.dumps({**context, **result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {path.relative_to(ROOT)}")
    return path


def run_job_here(job_id: str, body: Any) -> dict[str, Any]:
    """Run a job's body in this process through the worker's runner (lease, heartbeat, the row marked
    succeeded or failed), so that no row is left running or queued for a server's reaper to run again in
    the middle of a measurement; the body's metrics, or RuntimeError with the job's error."""
    from core.db import session_scope
    from core.tables import Job
    from workers.runner import run_job

    out: dict[str, Any] = {}

    def capture(ctx: Any) -> dict[str, Any]:
        out.update(body(ctx) or {})
        return out

    run_job(job_id, capture)
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job.status != "succeeded":
            raise RuntimeError(f"job {job_id} ({job.kind}) ended {job.status}: {job.error}")
    return out


def ingest_sample(
    source: str,
    per_class: int,
    params: dict[str, Any],
    name: str = "bench",
    side: int | None = None,
    archive: bytes | None = None,
) -> tuple[str, str, dict]:
    """Ingest ``per_class`` real images per class (or the zip ``archive``) through the ingestion job itself.
    Returns (tenant id, dataset id, the job's metrics with ``seconds`` and ``archive_bytes`` added)."""
    import time

    from core import jobs
    from core.datasets import create_dataset
    from core.db import session_scope
    from core.keys import upload_key
    from core.sample_data import class_folder_zip
    from core.storage import get_storage
    from core.tenancy import get_or_create_tenant
    from workers.jobs.ingest import ingest_job

    if archive is None:
        archive = class_folder_zip(source, per_class=per_class, side=side)
    with session_scope() as s:
        tenant = get_or_create_tenant(s, name)
        dataset, version = create_dataset(s, tenant.id, f"{source}-{per_class}-{side}", params)
        job = jobs.create_job(s, tenant_id=tenant.id, kind="ingest")
        key = upload_key(tenant.id, job.id)
        job.params = {
            "mode": "archive",
            "upload_key": key,
            "dataset_id": dataset.id,
            "version_id": version.id,
            **params,
        }
        tenant_id, dataset_id, job_id = tenant.id, dataset.id, job.id
    get_storage().put_bytes(key, archive)
    start = time.perf_counter()
    metrics = run_job_here(job_id, ingest_job)
    return tenant_id, dataset_id, {**metrics, "seconds": time.perf_counter() - start, "archive_bytes": len(archive)}


def fashion_features(split: str, count: int, seed: int):  # type: ignore[no-untyped-def]
    """(efficientnet_lite0 features, labels) of ``count`` real Fashion-MNIST images of ``split`` ("train" or
    "t10k"), drawn with ``seed``, through the service's own engine and preprocessing."""
    import numpy as np

    from core.sample_data import encode_png, fashion_mnist
    from workers.runtime.engines import get_engine
    from workers.runtime.preprocess import load_rgb, stack_batch

    images, labels = fashion_mnist(split)
    picks = np.random.default_rng(seed).choice(len(images), size=count, replace=False)
    engine = get_engine("efficientnet_lite0")
    out = []
    for start in range(0, count, 256):
        batch = [load_rgb(encode_png(images[i]), engine.spec.preprocessing) for i in picks[start : start + 256]]
        out.append(engine.features(stack_batch(batch)))
    return np.concatenate(out), labels[picks].astype(str)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BENCH_REDIS_URL = "redis://127.0.0.1:6379/14"


def rate_limit_storage() -> str:
    """Where the benchmark server counts rate limits: in Redis, as a deployed service does (the broker's),
    when one answers on the default port; else in memory. Recorded in the results."""
    import redis

    try:
        redis.Redis.from_url(BENCH_REDIS_URL, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        return "memory://"
    return BENCH_REDIS_URL


@contextmanager
def api_server(data_dir: Path) -> Iterator[tuple[str, Any]]:
    """``tlserve api`` on a free loopback port over ``data_dir`` (jobs in-process; rate limits counted where
    :func:`rate_limit_storage` says), once it answers ``/healthz``: yields (base URL, the server's Popen);
    terminated on exit."""
    import subprocess
    import time

    import httpx

    port = free_port()
    env = {
        **os.environ,
        "TLSERVE_DATA_DIR": str(data_dir),
        "TLSERVE_BROKER_URL": "memory://",
        "TLSERVE_RATE_LIMIT_STORAGE_URL": rate_limit_storage(),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "api", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # readiness probe of the server process, bounded
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("tlserve api did not start")
            time.sleep(0.1)
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=30)
