"""The main job, for real: start tlserve (API + worker) on this machine and drive it over HTTP as an
application would, with the Python client (``tlserve_client``), on real images shipped by a package
(Fashion-MNIST from Debian, else scikit-learn's digits). Run with ``make demo``."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "client"))  # the client distribution, also when it is not installed

from tlserve_client import Client, TLServeError  # noqa: E402

from core.sample_data import default_source, iter_labelled_pngs, write_class_folders  # noqa: E402


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


def _follow(client: Client, job_id: str, what: str) -> dict[str, Any]:
    """Print a job's progress from its server-sent events (each stage once, and its end) until it finishes."""
    shown: set[tuple[str, str, bool]] = set()
    job: dict[str, Any] = {}
    for job in client.jobs.events(job_id):
        p = job["progress"]
        stage, done, total = p.get("stage", ""), p.get("done", 0), p.get("total", 0)
        mark = (job["status"], stage if stage != "epoch" else f"epoch{done}", bool(total) and done >= total)
        if mark not in shown:
            shown.add(mark)
            print(f"  [{what}] {job['status']:<9} {stage:<9} {done}/{total}", flush=True)
    return job


def _job_ok(client: Client, job_id: str, what: str) -> dict[str, Any]:
    job = _follow(client, job_id, what)
    if job["status"] != "succeeded":
        raise SystemExit(f"{what} failed: {job['error']}")
    return job


def upload(client: Client, source: str, per_class: int, workdir: Path) -> str:
    print(f"\n1. Upload {per_class} real images per class from '{source}': a folder with one sub-folder per class")
    folder = write_class_folders(source, per_class, workdir / "images" / source)
    t0 = time.perf_counter()
    created = client.datasets.upload(folder, name=f"{source}-demo", test_fraction=0.25, val_fraction=0.1, seed=0)
    _job_ok(client, created["job_id"], "ingest")
    dataset = client.datasets.get(created["id"])
    n, seconds = dataset["num_images"], time.perf_counter() - t0
    print(f"   dataset {dataset['id']} v{dataset['version']}: {n} images in {seconds:.1f}s")
    print(f"   classes: {dataset['classes']}")
    print(
        f"   splits:  {dataset['splits']}   rejected: {len(dataset['rejected'])}   "
        f"duplicates: {len(dataset['duplicates'])}"
    )
    return created["id"]


def features(client: Client, dataset_id: str, backbone: str, workdir: Path) -> None:
    print(f"\n2. Extract {backbone} features of every image (a job), then ask again (the cache answers)")
    first = client.features.extract(dataset_id, backbone)
    job = _job_ok(client, first["job_id"], "extract")
    m = job["metrics"]
    print(
        f"   {m['forward_images']} images through the backbone in {m['seconds']}s ({m['images_per_s']} images/s, "
        f"engine {m['engine_used']})"
    )
    t0 = time.perf_counter()
    again = client.features.extract(dataset_id, backbone)
    print(f"   second request: cached={again['cached']}, {(time.perf_counter() - t0) * 1000:.0f} ms")
    npz = client.features.download(first["id"], workdir)
    print(f"   download: {npz.stat().st_size / 1e6:.1f} MB npz (features, labels, image_ids)")


def linear_probe(client: Client, dataset_id: str, backbone: str) -> dict[str, Any]:
    print("\n3. Linear probe: a logistic head on the cached features, C chosen by cross-validation")
    created = client.models.train(dataset_id, backbone, strategy="linear_probe")
    job = _job_ok(client, created["job_id"], "fit")
    model = client.models.get(created["id"])
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


def predict(client: Client, model: dict[str, Any], source: str) -> None:
    print("\n4. Predict: new images (not in the dataset) and one broken file, over HTTP")
    fresh = [(name, label, data) for name, label, data in iter_labelled_pngs(source, 1, seed=12345)][:5]
    images = [(name, data) for name, _, data in fresh] + [("broken.png", b"this is not an image")]
    t0 = time.perf_counter()
    rows = client.predict(model["id"], images, top_k=3)
    ms = (time.perf_counter() - t0) * 1000
    truth = {name: label for name, label, _ in fresh}
    for p in rows:
        if "error" in p:
            print(f"   {p['file']:<22} error: {p['error']}")
        else:
            print(f"   {p['file']:<22} -> {p['label']:<11} ({p['score']:.2f})  truth: {truth[p['file']]}")
    print(f"   {len(images)} files in {ms:.0f} ms")


def compare(client: Client, dataset_id: str, backbones: list[str]) -> None:
    print(f"\n5. Which backbone transfers best to this data? {backbones}")
    job = client.models.compare(dataset_id, backbones, allow_random_weights=True)
    done = _job_ok(client, job["id"], "compare")
    for row in done["metrics"]["leaderboard"]:
        print(
            f"   #{row['rank']} {row['backbone']:<20} test acc {row['test_accuracy']:.3f}  "
            f"macro-F1 {row['macro_f1']:.3f}  extraction {row['extraction_seconds']}s"
            f"{' (cache)' if row['features_from_cache'] else ''}"
        )


def finetune(client: Client, dataset_id: str, backbone: str, epochs: int) -> None:
    print(f"\n6. Fine-tune {backbone}: new head, last stage unfrozen, flips + crops, {epochs} epochs")
    settings = {"epochs": epochs, "unfreeze": "last:1", "augment": ["hflip", "crop"], "lr": 1e-3, "batch_size": 32}
    created = client.models.train(dataset_id, backbone, strategy="finetune", finetune=settings)
    job = _job_ok(client, created["job_id"], "finetune")
    for row in job["metrics"]["history"]:
        print(
            f"   epoch {row['epoch']}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
            f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} ({row['seconds']:.1f}s)"
        )
    model = client.models.get(created["id"])
    _print_metrics(model, f"best epoch {job['metrics']['best_epoch']}, {job['metrics']['data_path']} data path")


def run(client: Client, source: str, per_class: int, epochs: int, workdir: Path) -> None:
    dataset_id = upload(client, source, per_class, workdir)
    features(client, dataset_id, "efficientnet_lite0", workdir)
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
        with Client(base, key, timeout=600) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    health = client.health()
                    if health.get("status") == "ok":
                        break
                except TLServeError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("tlserve did not start; see its output above")
                time.sleep(0.3)
            print(f"tlserve is up at {base}: {health}")
            try:
                run(client, args.source or default_source(), args.per_class, args.epochs, data_dir / "client")
            except TLServeError as e:
                raise SystemExit(f"request failed: {e}") from None
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
