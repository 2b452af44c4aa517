"""One extraction split into shards across workers: does adding a worker (a core, a machine) add throughput?

Real worker processes on a redis-server of its own and one SQLite database, each worker one pool process
pinned to its own core (``taskset``), ONNX Runtime and torch on one thread, decoding on one thread beside the
forward pass. The same ``--images`` real images (Fashion-MNIST) are extracted three times with
efficientnet_lite0, each time from scratch (the stored chunks are deleted in between):

* ``unsharded_1_worker``: one job on one worker (``TLSERVE_EXTRACT_SHARD_IMAGES=0``);
* ``sharded_1_worker``: shards of ``--shard-images`` on one worker (the shard overhead);
* ``sharded_2_workers``: the same shards on two workers, one per core (the scaling figure).

Reported: wall seconds from submit to the published feature set, images/s, speed-up of two workers over one,
and the workers' CPU-seconds per image (every process of each worker, read from /proc), so that the shard
overhead shows even when the machine is busy.

    .venv/bin/python benchmarks/bench_shards.py --images 2000 [--shard-images 512]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, ingest_sample, isolated_env, write_result

BACKBONE = "efficientnet_lite0"
TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(group: int) -> float:
    """utime + stime of every live process of a process group (a worker and its pool)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp (field 5 of the whole line)
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def _start_workers(n: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        cmd = ["taskset", "-c", str(i % (os.cpu_count() or 1)), sys.executable, "-m", "service.cli", "worker"]
        cmd += ["--queues", "cpu", "--concurrency", "1"]
        log = (logs / f"worker-{n}-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(logs: Path, n: int, timeout: float = 300) -> None:
    """Until every worker logged Celery's 'ready' line (and its background graph warm-up is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = [p.read_text(errors="replace") for p in logs.glob(f"worker-{n}-*.log")]
        if len(texts) == n and all("ready." in t and "graph cache:" in t for t in texts):
            return
        time.sleep(0.5)  # polling other processes' logs
    raise RuntimeError(f"workers not ready after {timeout}s: see {logs}")


def _run(fs_id: str, tenant_id: str) -> float:
    """Delete the feature set's chunks, send a fresh extraction job, wait until the set is ready."""
    from core import jobs
    from core.db import session_scope
    from core.status import JobKind, ResourceStatus, ResourceType
    from core.storage import get_storage
    from core.tables import FeatureSet
    from workers.dispatch import enqueue

    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        get_storage().delete_prefix(fs.storage_prefix)
        job = jobs.create_job(
            s,
            tenant_id=tenant_id,
            kind=JobKind.EXTRACT,
            resource_type=ResourceType.FEATURES,
            resource_id=fs_id,
            params={"feature_set_id": fs_id},
        )
        fs.status, fs.job_id = ResourceStatus.QUEUED, job.id
        job_id = job.id
    start = time.perf_counter()
    enqueue(job_id, JobKind.EXTRACT, "cpu")
    while True:
        with session_scope() as s:
            fs = s.get(FeatureSet, fs_id)
            status = fs.status
        if status == ResourceStatus.READY:
            return time.perf_counter() - start
        if status not in (ResourceStatus.QUEUED, ResourceStatus.RUNNING):
            raise RuntimeError(f"extraction ended {status}")
        time.sleep(0.2)  # polling the database the workers write


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shard-images", type=int, default=512)
    args = parser.parse_args()

    redis_dir = Path(tempfile.mkdtemp(prefix="tlserve-bench-redis-"))
    port = _free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(redis_dir)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    broker = f"redis://127.0.0.1:{port}/0"
    data = isolated_env(broker)
    logs = data / "logs"
    logs.mkdir()
    try:
        from core.db import session_scope
        from core.features import plan_extraction
        from workers.plan import extractor

        params = {"val_fraction": 0.0, "test_fraction": 0.0, "seed": 0}
        tenant_id, dataset_id, _ = ingest_sample("fashion", args.images // 10, params)
        with session_scope() as s:
            planned = plan_extraction(s, tenant_id, dataset_id, extractor(BACKBONE, False, tenant_id))
            fs_id = planned.feature_set.id
            if planned.job is not None:
                s.delete(planned.job)  # this benchmark sends its own jobs
        base = {
            **os.environ,
            "TLSERVE_TORCH_THREADS": "1",
            "TLSERVE_ORT_THREADS": "1",
            "TLSERVE_DECODE_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        runs = {}
        for name, workers, shard in (
            ("unsharded_1_worker", 1, 0),
            ("sharded_1_worker", 1, args.shard_images),
            ("sharded_2_workers", 2, args.shard_images),
        ):
            env = {**base, "TLSERVE_EXTRACT_SHARD_IMAGES": str(shard)}
            for old in logs.glob(f"worker-{workers}-*.log"):
                old.unlink()
            procs = _start_workers(workers, env, logs)
            try:
                _wait_ready(logs, workers)
                cpu0 = sum(_cpu_seconds(p.pid) for p in procs)
                seconds = _run(fs_id, tenant_id)
                cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu0
            finally:
                _stop(procs)
            runs[name] = {
                "workers": workers,
                "shard_images": shard,
                "seconds": round(seconds, 2),
                "images_per_s": round(args.images / seconds, 1),
                "worker_cpu_s_per_image": round(cpu / args.images, 5),
            }
            print(name, runs[name], flush=True)
        one, two = runs["sharded_1_worker"], runs["sharded_2_workers"]
        result = {
            "images": args.images,
            "backbone": BACKBONE,
            "runs": runs,
            "speedup_2_workers_vs_1": round(one["seconds"] / two["seconds"], 2),
            "speedup_2_sharded_vs_1_unsharded": round(runs["unsharded_1_worker"]["seconds"] / two["seconds"], 2),
            "shard_overhead_cpu_s_per_image": round(
                one["worker_cpu_s_per_image"] - runs["unsharded_1_worker"]["worker_cpu_s_per_image"], 5
            ),
            "note": "measured with other engineers' processes on the same 2 cores; see load_average_1m_at_end",
        }
        write_result("shards", result)
    finally:
        redis.kill()
        redis.wait()


if __name__ == "__main__":
    main()
