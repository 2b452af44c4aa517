"""Feature extraction speed and memory, side by side in one run, on real images (Fashion-MNIST from
Debian's package, else scikit-learn's digits) with efficientnet_lite0:

* the extraction job (``workers.features.extract_features``: canonical copies decoded on a thread while
  ONNX Runtime runs the previous batch, chunks written to storage);
* (a) the bare engine forward on pre-decoded uint8 batches, same threads;
* (b) the naive script a user would write: torchvision ``ImageFolder`` + ``DataLoader`` + eager torch;
* worker memory: peak RSS of an extraction process over 1k and over 10k images (``--memory``).

    .venv/bin/python benchmarks/bench_extract.py --images 1000 [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, isolated_env, write_result

BACKBONE = "efficientnet_lite0"


def ingest(n: int) -> str:
    """A ready dataset version of ``n`` real images; returns its feature-set id (planned, not extracted)."""
    from core import jobs
    from core.datasets import create_dataset, upload_key
    from core.db import session_scope
    from core.sample_data import class_folder_zip, default_source
    from core.storage import get_storage
    from core.tenancy import get_or_create_tenant
    from workers.datasets import ingest_job
    from workers.features import plan_extraction

    params = {"val_fraction": 0.0, "test_fraction": 0.0, "seed": 0}
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "bench")
        dataset, version = create_dataset(s, tenant.id, "bench", params)
        job = jobs.create_job(s, tenant_id=tenant.id, kind="ingest")
        key = upload_key(tenant.id, job.id)
        job.params = {
            "mode": "archive",
            "upload_key": key,
            "dataset_id": dataset.id,
            "version_id": version.id,
            **params,
        }
    get_storage().put_bytes(key, class_folder_zip(default_source(), per_class=n // 10))
    ingest_job(jobs.begin_attempt(job.id))
    with session_scope() as s:
        return plan_extraction(s, tenant.id, dataset.id, BACKBONE).feature_set.id


def job_rate(fs_id: str) -> float:
    from workers.features import extract_features

    return extract_features(None, fs_id)["images_per_s"]


def bare_rate(n: int) -> float:
    """The engine alone on pre-decoded batches of the same size the job uses."""
    import numpy as np

    from core.settings import get_settings
    from workers.engine import get_engine

    engine = get_engine(BACKBONE)
    size = engine.spec.preprocessing.input_size
    batch = np.random.default_rng(0).integers(0, 256, (get_settings().batch_size, size, size, 3), dtype=np.uint8)
    engine.features(batch)  # warm-up
    done, start = 0, time.perf_counter()
    while done < n:
        done += len(engine.features(batch))
    return done / (time.perf_counter() - start)


def naive_rate(n: int) -> tuple[float, int]:
    """ImageFolder + DataLoader + eager torch, as in the tutorials; returns (images/s, torch threads)."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from core.sample_data import default_source, iter_labelled_pngs
    from workers.backbones import get_backbone, load_model

    folder = Path(tempfile.mkdtemp(prefix="naive-"))
    for name, label, data in iter_labelled_pngs(default_source(), n // 10):
        (folder / label).mkdir(exist_ok=True)
        (folder / label / name).write_bytes(data)
    spec = get_backbone(BACKBONE)
    prep = spec.preprocessing
    tf = transforms.Compose(
        [
            transforms.Resize(prep.resize_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(prep.input_size),
            transforms.Grayscale(3),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )
    loader = DataLoader(datasets.ImageFolder(str(folder), transform=tf), batch_size=64)
    torch.set_num_threads(os.cpu_count() or 1)  # a fresh user process gets every core
    model = load_model(spec).eval()
    start, done = time.perf_counter(), 0
    with torch.no_grad():
        for x, _ in loader:
            model.forward_head(model.forward_features(x), pre_logits=True)
            done += len(x)
    return done / (time.perf_counter() - start), torch.get_num_threads()


def peak_rss_mb(n: int) -> float:
    """Peak RSS of a fresh process that ingests nothing but extracts ``n`` images (after its own ingest)."""
    code = (
        "import sys, resource, json; sys.path.insert(0, 'benchmarks');"
        "import bench_extract as b; from common import isolated_env; isolated_env();"
        f"fs = b.ingest({n}); import resource as r; before = r.getrusage(r.RUSAGE_SELF).ru_maxrss;"
        "b.job_rate(fs); print(json.dumps({'peak_kb': r.getrusage(r.RUSAGE_SELF).ru_maxrss, 'before_kb': before}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env={**os.environ}
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return row["peak_kb"] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS at 1k and 10k images")
    args = parser.parse_args()
    isolated_env()
    from core.settings import get_settings

    settings = get_settings()
    fs_id = ingest(args.images)
    bare_rate(64)  # exports the ONNX graph once, outside the timings
    job = job_rate(fs_id)
    bare = bare_rate(args.images)
    naive, naive_threads = naive_rate(args.images)
    result = {
        "backbone": BACKBONE,
        "images": args.images,
        "threads": {"ort": settings.ort_threads, "decode": settings.decode_threads, "naive_torch": naive_threads},
        "extraction_job_images_per_s": round(job, 1),
        "bare_engine_images_per_s": round(bare, 1),
        "naive_torch_images_per_s": round(naive, 1),
        "job_vs_bare": round(job / bare, 3),
        "job_vs_naive": round(job / naive, 2),
        "targets": {"job_vs_bare": ">= 0.9", "job_vs_naive": ">= 4"},
    }
    if args.memory:
        small, large = peak_rss_mb(1000), peak_rss_mb(10000)
        result["memory"] = {
            "peak_rss_mb_1k": round(small, 1),
            "peak_rss_mb_10k": round(large, 1),
            "growth_mb": round(large - small, 1),
            "target_growth_mb": "<= 150",
        }
    write_result("extract", result)


if __name__ == "__main__":
    main()
