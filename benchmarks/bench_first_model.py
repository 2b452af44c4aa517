"""The first model, as a new user meets it: a freshly started ``tlserve up`` (API process, Celery worker, the
real Redis) on an empty data folder; upload a zip of N real images (Fashion-MNIST enlarged to 300 × 300
PNGs, one folder per class), wait for the ingestion, train a linear probe on efficientnet_lite0 with the
defaults, wait for it: the time from the upload's first byte to the ready model.

Measured twice — after install (the installation's graph cache empty too: the first job exports the
backbone) and on a fresh data folder of an installation where ``tlserve warm`` ran (as ``make install``
does) — against a plain script that only extracts the same images' features with torch eager
(torchvision transforms, batch 32, at 1 and at 2 torch threads: its best is the baseline), timed from its
process start, in the same run.

    .venv/bin/python benchmarks/bench_first_model.py --images 600
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from common import ROOT, free_port, write_result

BACKBONE = "efficientnet_lite0"
SIDE = 300
REDIS_DB = "redis://127.0.0.1:6379/13"  # a database of its own on the real Redis

PLAIN_SCRIPT = """
import sys, time
start = time.perf_counter()
from pathlib import Path
import torch
from PIL import Image
from torchvision import transforms
from workers.backbones import get_backbone, load_model

torch.set_num_threads(int(sys.argv[2]))
spec = get_backbone("efficientnet_lite0")
prep = spec.preprocessing
tf = transforms.Compose([
    transforms.Resize(prep.resize_size, interpolation=transforms.InterpolationMode.BICUBIC),
    transforms.CenterCrop(prep.input_size),
    transforms.ToTensor(),
    transforms.Normalize(prep.mean, prep.std),
])
model = load_model(spec).eval()  # the same weights file the service loads
files = sorted(Path(sys.argv[1]).rglob("*.png"))
features = []
with torch.no_grad():
    for i in range(0, len(files), 32):
        x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[i : i + 32]])
        features.append(model.forward_head(model.forward_features(x), pre_logits=True))
n = sum(len(f) for f in features)
print(n, time.perf_counter() - start)
"""


def images(per_class: int, folder: Path) -> Path:
    """The images as class folders on disk (for the plain script) and as a zip beside them (the upload)."""
    from core.sample_data import default_source, iter_labelled_pngs

    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # PNGs do not compress further
        for name, label, data in iter_labelled_pngs(default_source(), per_class, seed=1, side=SIDE):
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / name).write_bytes(data)
            zf.writestr(f"{label}/{name}", data)
    return archive


def plain_script(folder: Path, threads: int) -> dict:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT, str(folder), str(threads)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - start
    n, inner = out.stdout.split()
    return {
        "torch_threads": threads,
        "images": int(n),
        "seconds": round(wall, 2),
        "seconds_in_script": round(float(inner), 2),
    }


def first_model(archive: Path, graph_cache: Path) -> dict:
    """Start ``tlserve up`` on an empty data folder, then upload → ingestion → probe → ready."""
    import redis
    from tlserve_client import Client

    redis.Redis.from_url(REDIS_DB).flushdb()
    data = Path(tempfile.mkdtemp(prefix="tlserve-first-"))
    env = {
        **os.environ,
        "TLSERVE_DATA_DIR": str(data),
        "TLSERVE_BROKER_URL": REDIS_DB,
        "TLSERVE_GRAPH_CACHE_DIR": str(graph_cache),
    }
    env.pop("TLSERVE_DATABASE_URL", None)
    key = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "bench"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    port = free_port()
    log = (data / "up.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    try:
        with Client(f"http://127.0.0.1:{port}", key, timeout=600) as tl:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if tl.health().get("status") == "ok":
                        break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)  # waiting for another process to come up
            ping = "import sys; from workers.celery_app import app; sys.exit(0 if app.control.ping(timeout=2) else 1)"
            while subprocess.run([sys.executable, "-c", ping], cwd=ROOT, env=env, capture_output=True).returncode:
                if time.monotonic() > deadline + 120:
                    raise RuntimeError("the worker of `tlserve up` did not answer a ping")
            # the clock starts once the service (API and worker) is up, when a person would start uploading
            start = time.perf_counter()
            ds = tl.datasets.upload(archive, name="first", wait=True, timeout=600)
            ingested = time.perf_counter() - start
            model = tl.models.train(ds["id"], BACKBONE, wait=True, timeout=900)
            total = time.perf_counter() - start
            return {
                "images": ds["num_images"],
                "seconds": round(total, 2),
                "ingestion_seconds": round(ingested, 2),
                "training_seconds": round(total - ingested, 2),
                "test_accuracy": model["metrics"]["accuracy"],
            }
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=600)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="first-model-images-"))
    archive = images(args.images // 10, folder)

    plain = [plain_script(folder, threads) for threads in (1, 2)]
    best = min(plain, key=lambda r: r["seconds"])
    cold = first_model(archive, Path(tempfile.mkdtemp(prefix="graphs-empty-")))  # nothing cached anywhere
    warm_cache = Path(tempfile.mkdtemp(prefix="graphs-warm-"))
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "service.cli", "warm", BACKBONE],
        cwd=ROOT, env={**os.environ, "TLSERVE_GRAPH_CACHE_DIR": str(warm_cache)}, check=True, capture_output=True,
    )  # fmt: skip
    warm_seconds = time.perf_counter() - started
    fresh = first_model(archive, warm_cache)
    write_result(
        "first_model",
        {
            "backbone": BACKBONE,
            "head": "logistic, cross-validated C (the defaults)",
            "images": f"{args.images} Fashion-MNIST images enlarged to {SIDE}x{SIDE} PNG, one folder per class",
            "plain_script": plain,
            "after_install": cold,
            "set_up_tlserve_warm_seconds": round(warm_seconds, 2),
            "fresh_data_folder": fresh,
            "after_install_vs_plain": round(cold["seconds"] / best["seconds"], 2),
            "fresh_data_folder_vs_plain": round(fresh["seconds"] / best["seconds"], 2),
            "target": "<= 0.5",
        },
    )


if __name__ == "__main__":
    main()
