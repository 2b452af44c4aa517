"""Feature extraction speed and memory, side by side in one run, on real images (Fashion-MNIST from
Debian's package, else scikit-learn's digits) with efficientnet_lite0:

* the extraction job (``workers.jobs.extract.extract_features``: canonical copies decoded on a thread while
  ONNX Runtime runs the previous batch, chunks written to storage);
* (a) the bare engine forward on pre-decoded uint8 batches, same threads (job and engine at 1 thread, as a
  ``tlserve worker`` process runs, and at one per core, as ``tlserve up`` runs a lone job; the faster counted);
* (b) the naive script a user would write: torchvision ``ImageFolder`` + ``DataLoader`` + eager torch, at 1
  torch thread and at one per core, the faster counted (after a warm-up forward);
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

from common import ROOT, ingest_sample, isolated_env, write_result

BACKBONE = "efficientnet_lite0"


def ingest(n: int, tenant: str = "bench") -> str:
    """A ready dataset version of ``n`` real images of its own ``tenant``; returns its feature-set id (planned,
    not extracted)."""
    from core.db import session_scope
    from core.features import plan_extraction
    from core.sample_data import default_source
    from workers.plan import extractor

    params = {"val_fraction": 0.0, "test_fraction": 0.0, "seed": 0}
    tenant_id, dataset_id, _ = ingest_sample(default_source(), n // 10, params, name=tenant)
    with session_scope() as s:
        return plan_extraction(s, tenant_id, dataset_id, extractor(BACKBONE, False, tenant_id)).feature_set.id


def job_rate(fs_id: str) -> float:
    from workers.jobs.extract import extract_features

    return extract_features(None, fs_id)["images_per_s"]


def bare_rate(n: int) -> float:
    """The engine alone on pre-decoded batches of the same size the job uses."""
    import numpy as np

    from core.settings import get_settings
    from workers.runtime.engines import get_engine

    engine = get_engine(BACKBONE)
    size = engine.spec.preprocessing.input_size
    batch = np.random.default_rng(0).integers(0, 256, (get_settings().batch_size, size, size, 3), dtype=np.uint8)
    engine.features(batch)  # warm-up
    done, start = 0, time.perf_counter()
    while done < n:
        done += len(engine.features(batch))
    return done / (time.perf_counter() - start)


def naive_rate(n: int, threads: int) -> float:
    """ImageFolder + DataLoader + eager torch with ``threads`` torch threads, as in the tutorials (images/s)."""
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
    torch.set_num_threads(threads)
    model = load_model(spec).eval()
    with torch.no_grad():
        model.forward_head(model.forward_features(torch.zeros(8, 3, prep.input_size, prep.input_size)))  # warm-up
        start, done = time.perf_counter(), 0
        for x, _ in loader:
            model.forward_head(model.forward_features(x), pre_logits=True)
            done += len(x)
    return done / (time.perf_counter() - start)


def _python(code: str, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb(n: int) -> float:
    """Peak RSS of a worker-like process that only extracts ``n`` images: a first process ingests them and
    exports the ONNX graph into a fresh data folder, a second one (measured) runs the extraction job."""
    data = tempfile.mkdtemp(prefix=f"tlserve-mem{n}-")
    env = {**os.environ, "TLSERVE_DATA_DIR": data, "TLSERVE_BROKER_URL": "memory://"}
    env.pop("TLSERVE_DATABASE_URL", None)
    prepare = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import bench_extract as b;"
        f"from core.migrate import upgrade; upgrade(); fs = b.ingest({n}); b.bare_rate(8);"
        "print(json.dumps({'fs': fs}))"
    )
    fs_id = _python(prepare, env)["fs"]
    # VmHWM, the high-water mark of this process's own memory map: getrusage's ru_maxrss would also carry
    # the parent's (Python starts children with vfork, and Linux keeps the borrowed map's high-water mark
    # across the exec), i.e. this benchmark process's own peak.
    measure = (
        "import sys, json; sys.path.insert(0, 'benchmarks'); import bench_extract as b;"
        f"b.job_rate({fs_id!r}); status = open('/proc/self/status').read();"
        "print(json.dumps({'peak_kb': int(status.split('VmHWM:')[1].split()[0])}))"
    )
    return _python(measure, env)["peak_kb"] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS at 1k and 10k images")
    args = parser.parse_args()
    isolated_env()
    from core.settings import get_settings, reset_settings
    from workers.runtime.engines import clear_engine_cache

    # Both sides at 1 thread and at one per core: a `tlserve worker` process gets 1 (one process per core),
    # `tlserve up` runs a lone job on every core; the naive script as a user would tune it.
    thread_counts = sorted({1, os.cpu_count() or 1})
    engine_runs = {}
    for threads in thread_counts:
        os.environ.update({"TLSERVE_ORT_THREADS": str(threads), "TLSERVE_TORCH_THREADS": str(threads)})
        reset_settings()
        clear_engine_cache()
        fs_id = ingest(args.images, tenant=f"bench-{threads}")
        bare_rate(64)  # loads (and the first time exports) the ONNX graph, outside the timings
        job = job_rate(fs_id)
        engine_runs[threads] = {"job": job, "bare": bare_rate(args.images)}
    settings = get_settings()
    naive_by_threads = {t: naive_rate(args.images, t) for t in thread_counts}
    naive_threads = max(naive_by_threads, key=naive_by_threads.__getitem__)
    naive = naive_by_threads[naive_threads]
    job_threads = max(engine_runs, key=lambda t: engine_runs[t]["job"])
    job, bare = engine_runs[job_threads]["job"], engine_runs[job_threads]["bare"]
    result = {
        "backbone": BACKBONE,
        "images": args.images,
        "threads": {"ort": job_threads, "decode": settings.decode_threads, "naive_torch": naive_threads},
        "extraction_job_images_per_s": round(job, 1),
        "bare_engine_images_per_s": round(bare, 1),
        "naive_torch_images_per_s": round(naive, 1),
        "by_threads": {
            str(t): {
                "extraction_job_images_per_s": round(engine_runs[t]["job"], 1),
                "bare_engine_images_per_s": round(engine_runs[t]["bare"], 1),
                "naive_torch_images_per_s": round(naive_by_threads[t], 1),
                "job_vs_bare": round(engine_runs[t]["job"] / engine_runs[t]["bare"], 3),
            }
            for t in thread_counts
        },
        "job_vs_bare": round(job / bare, 3),
        "job_vs_naive": round(job / naive, 2),  # each at its best thread count
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
