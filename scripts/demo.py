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

from core.sample_data import class_folder_zip, default_source, iter_labelled_pngs  # noqa: E402


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
    """Print a job's progress from its server-sent events (each stage once, and its end) until it finishes."""
    shown: set[tuple[str, str, bool]] = set()
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            job = json.loads(line[6:])
            p = job["progress"]
            stage, done, total = p.get("stage", ""), p.get("done", 0), p.get("total", 0)
            mark = (job["status"], stage if stage != "epoch" else f"epoch{done}", bool(total) and done >= total)
            if mark not in shown:
                shown.add(mark)
                print(f"  [{what}] {job['status']:<9} {stage:<9} {done}/{total}", flush=True)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
    raise RuntimeError(f"event stream of job {job_id} ended early")


def _check(resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code >= 400:
        raise SystemExit(f"request failed: {resp.status_code} {resp.text}")
    return resp.json()


def _job_ok(client: httpx.Client, job_id: str, what: str) -> dict[str, Any]:
    job = _follow(client, job_id, what)
    if job["status"] != "succeeded":
        raise SystemExit(f"{what} failed: {job['error']}")
    return job


def upload(client: httpx.Client, source: str, per_class: int) -> str:
    print(f"\n1. Upload {per_class} real images per class from '{source}' as a zip (one folder per class)")
    archive = class_folder_zip(source, per_class=per_class, root=source)
    t0 = time.perf_counter()
    form = {"name": f"{source}-demo", "test_fraction": "0.25", "val_fraction": "0.1", "seed": "0"}
    created = _check(
        client.post("/v1/datasets", data=form, files={"archive": (f"{source}.zip", archive, "application/zip")})
    )
    _job_ok(client, created["job_id"], "ingest")
    dataset = _check(client.get(f"/v1/datasets/{created['id']}"))
    n, seconds = dataset["num_images"], time.perf_counter() - t0
    print(f"   dataset {dataset['id']} v{dataset['version']}: {n} images in {seconds:.1f}s")
    print(f"   classes: {dataset['classes']}")
    print(
        f"   splits:  {dataset['splits']}   rejected: {len(dataset['rejected'])}   "
        f"duplicates: {len(dataset['duplicates'])}"
    )
    return created["id"]


def features(client: httpx.Client, dataset_id: str, backbone: str) -> None:
    print(f"\n2. Extract {backbone} features of every image (a job), then ask again (the cache answers)")
    first = _check(client.post("/v1/features", json={"dataset_id": dataset_id, "backbone": backbone}))
    job = _job_ok(client, first["job_id"], "extract")
    m = job["metrics"]
    print(
        f"   {m['forward_images']} images through the backbone in {m['seconds']}s ({m['images_per_s']} images/s, "
        f"engine {m['engine_used']})"
    )
    t0 = time.perf_counter()
    again = client.post("/v1/features", json={"dataset_id": dataset_id, "backbone": backbone})
    print(
        f"   second request: HTTP {again.status_code}, cached={again.json()['cached']}, "
        f"{(time.perf_counter() - t0) * 1000:.0f} ms"
    )
    npz = client.get(f"/v1/features/{first['id']}/download", params={"format": "npz"})
    print(f"   download: {len(npz.content) / 1e6:.1f} MB npz (features, labels, image_ids)")


def linear_probe(client: httpx.Client, dataset_id: str, backbone: str) -> dict[str, Any]:
    print("\n3. Linear probe: a logistic head on the cached features, C chosen by cross-validation")
    created = _check(
        client.post("/v1/models", json={"dataset_id": dataset_id, "backbone": backbone, "strategy": "linear_probe"})
    )
    job = _job_ok(client, created["job_id"], "fit")
    model = _check(client.get(f"/v1/models/{created['id']}"))
    _print_metrics(
        model,
        f"forward passes this job: {job['metrics']['forward_images']}, "
        f"fit {job['metrics']['fit_seconds']}s, C={model['params']['fit']['chosen']['C']:.3g}",
    )
    return model


def _print_metrics(model: dict[str, Any], extra: str) -> None:
    m = model["metrics"]
    print(
        f"   model {model['id']}: test accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, "
        f"train accuracy {m['train_accuracy']:.3f}  ({extra})"
    )


def predict(client: httpx.Client, model: dict[str, Any], source: str) -> None:
    print("\n4. Predict: new images (not in the dataset) and one broken file, over HTTP")
    fresh = [(name, label, data) for name, label, data in iter_labelled_pngs(source, 1, seed=12345)][:5]
    files = [("files", (name, data, "image/png")) for name, _, data in fresh]
    files.append(("files", ("broken.png", b"this is not an image", "image/png")))
    t0 = time.perf_counter()
    out = _check(client.post(f"/v1/models/{model['id']}/predict", files=files, data={"top_k": "3"}))
    ms = (time.perf_counter() - t0) * 1000
    truth = {name: label for name, label, _ in fresh}
    for p in out["predictions"]:
        if "error" in p:
            print(f"   {p['file']:<22} error: {p['error']}")
        else:
            print(f"   {p['file']:<22} -> {p['label']:<11} ({p['score']:.2f})  truth: {truth[p['file']]}")
    print(f"   {len(files)} files in {ms:.0f} ms")


def compare(client: httpx.Client, dataset_id: str, backbones: list[str]) -> None:
    print(f"\n5. Which backbone transfers best to this data? {backbones}")
    job = _check(
        client.post(
            "/v1/compare", json={"dataset_id": dataset_id, "backbones": backbones, "allow_random_weights": True}
        )
    )
    done = _job_ok(client, job["job_id"], "compare")
    for row in done["metrics"]["leaderboard"]:
        print(
            f"   #{row['rank']} {row['backbone']:<20} test acc {row['test_accuracy']:.3f}  "
            f"macro-F1 {row['macro_f1']:.3f}  extraction {row['extraction_seconds']}s"
            f"{' (cache)' if row['features_from_cache'] else ''}"
        )


def finetune(client: httpx.Client, dataset_id: str, backbone: str, epochs: int) -> None:
    print(f"\n6. Fine-tune {backbone}: new head, last stage unfrozen, flips + crops, {epochs} epochs")
    body = {
        "dataset_id": dataset_id,
        "backbone": backbone,
        "strategy": "finetune",
        "finetune": {
            "epochs": epochs,
            "unfreeze": "last:1",
            "augment": ["hflip", "crop"],
            "lr": 1e-3,
            "batch_size": 32,
        },
    }
    created = _check(client.post("/v1/models", json=body))
    job = _job_ok(client, created["job_id"], "finetune")
    for row in job["metrics"]["history"]:
        print(
            f"   epoch {row['epoch']}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
            f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} ({row['seconds']:.1f}s)"
        )
    model = _check(client.get(f"/v1/models/{created['id']}"))
    _print_metrics(model, f"best epoch {job['metrics']['best_epoch']}, {job['metrics']['data_path']} data path")


def run(client: httpx.Client, source: str, per_class: int, epochs: int) -> None:
    dataset_id = upload(client, source, per_class)
    features(client, dataset_id, "efficientnet_lite0")
    model = linear_probe(client, dataset_id, "efficientnet_lite0")
    predict(client, model, source)
    compare(client, dataset_id, ["efficientnet_lite0", "mobilenet_v3_small"])
    if epochs > 0:
        finetune(client, dataset_id, "efficientnet_lite0", epochs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--source", choices=["fashion", "digits"], default=None)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (0 skips fine-tuning)")
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
            run(client, args.source or default_source(), args.per_class, args.epochs)
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
