"""The main job, for real: start tlserve (API + worker) on this machine and drive it over HTTP as an
application would, on real images shipped by a package (Fashion-MNIST from Debian, else scikit-learn's
digits). Run with ``make demo``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.sample_data import class_folder_zip, default_source  # noqa: E402


def _redis_up(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        return True
    except redis.RedisError:
        return False


def _cli(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    return out.stdout


def _follow(client: httpx.Client, job_id: str, what: str) -> dict[str, Any]:
    """Print a job's progress from its server-sent events until it finishes."""
    last_line = ""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            job = json.loads(line[6:])
            p = job["progress"]
            text = f"  [{what}] {job['status']:<9} {p.get('stage', ''):<10} {p.get('done', 0)}/{p.get('total', 0)}"
            if text != last_line:
                print(text, flush=True)
                last_line = text
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
    raise RuntimeError(f"event stream of job {job_id} ended early")


def _check(resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code >= 400:
        raise SystemExit(f"request failed: {resp.status_code} {resp.text}")
    return resp.json()


def run(client: httpx.Client, source: str, per_class: int) -> None:
    print(f"\n1. Upload {per_class} real images per class from '{source}' as a zip (one folder per class)")
    archive = class_folder_zip(source, per_class=per_class, root=source)
    t0 = time.perf_counter()
    created = _check(
        client.post(
            "/v1/datasets",
            data={"name": f"{source}-demo", "test_fraction": "0.25", "val_fraction": "0.1", "seed": "0"},
            files={"archive": (f"{source}.zip", archive, "application/zip")},
        )
    )
    job = _follow(client, created["job_id"], "ingest")
    if job["status"] != "succeeded":
        raise SystemExit(f"ingestion failed: {job['error']}")
    dataset = _check(client.get(f"/v1/datasets/{created['id']}"))
    n = dataset["num_images"]
    print(
        f"   dataset {dataset['id']} v{dataset['version']}: {n} images in {time.perf_counter() - t0:.1f}s "
        f"({n / (time.perf_counter() - t0):.0f} images/s end to end)"
    )
    print(f"   classes: {dataset['classes']}")
    print(
        f"   splits:  {dataset['splits']}   rejected: {len(dataset['rejected'])}   "
        f"duplicates: {len(dataset['duplicates'])}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--source", choices=["fashion", "digits"], default=None)
    parser.add_argument("--keep", action="store_true", help="keep the demo's data folder")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="tlserve-demo-"))
    env = {**os.environ, "TLSERVE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("TLSERVE_DATABASE_URL", None)
    broker = env.get("TLSERVE_BROKER_URL", "redis://127.0.0.1:6379/0")
    if not broker.startswith("memory://") and not _redis_up(broker):
        print(f"!! Redis is not reachable at {broker}: running jobs in-process (TLSERVE_BROKER_URL=memory://)")
        broker = "memory://"
    env["TLSERVE_BROKER_URL"] = broker

    key = _cli(["keys", "create", "--tenant", "demo"], env).strip().splitlines()[-1]
    print(f"data folder: {data_dir}\nAPI key for tenant 'demo': {key[:12]}…")
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", str(args.port)], env=env, cwd=ROOT, start_new_session=True
    )
    base = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("tlserve did not start; see its output above")
            time.sleep(0.3)
        print(f"tlserve is up at {base}: {httpx.get(f'{base}/healthz').json()}")
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
            run(client, args.source or default_source(), args.per_class)
        print("\ndemo finished")
        return 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
