"""Prediction latency and throughput over loopback HTTP against the bare in-process path, in one run.

A logistic head is fitted on efficientnet_lite0 features of real images; then, with new real images:
* bare: decode + forward + head in this process, one image at a time;
* HTTP at concurrency 1 and 8 against ``tlserve api`` on 127.0.0.1 (micro-batching on).
Every loop is bounded in count and in time.

    .venv/bin/python benchmarks/bench_predict.py --requests 200
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import ROOT, api_server, isolated_env, write_result

TIME_LIMIT_S = 120.0


def train_probe() -> tuple[str, str]:
    """(tenant id, model id) of a linear probe on 300 Fashion-MNIST images (digits without the package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_extract import ingest

    from core import jobs
    from core.db import session_scope
    from core.models import create_model
    from core.tables import FeatureSet
    from workers.jobs.fit import fit_job
    from workers.plan import training_params

    fs_id = ingest(300)
    with session_scope() as s:
        fs = s.get(FeatureSet, fs_id)
        tenant_id, dataset_id = fs.tenant_id, fs.dataset_id
        spec, digest, params = training_params(
            "linear_probe",
            "efficientnet_lite0",
            head={"C": 1.0},
            finetune={},
            seed=0,
            allow_random_weights=False,
            tenant_id=tenant_id,
        )
        model, job = create_model(
            s,
            tenant_id,
            dataset_id=dataset_id,
            version=None,
            backbone="efficientnet_lite0",
            architecture=spec.name,
            weights_digest=digest,
            strategy="linear_probe",
            params=params,
            queue="cpu",
        )
        model_id, job_id = model.id, job.id
    fit_job(jobs.begin_attempt(job_id))
    return tenant_id, model_id


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "n": len(samples),
    }


def bare(tenant_id: str, model_id: str, images: list[tuple[str, bytes]], n: int) -> dict[str, float]:
    from workers.runtime.inference import decode_files
    from workers.runtime.serving import PREDICTORS

    predictor = PREDICTORS.get(tenant_id, model_id)
    out, deadline = [], time.monotonic() + TIME_LIMIT_S
    for i in range(n):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        batch = decode_files([images[i % len(images)]], predictor.spec)
        predictor.predict_proba(batch.pixels)
        out.append(time.perf_counter() - start)
    return percentiles(out[5:])


def http_load(base: str, key: str, model_id: str, images: list[tuple[str, bytes]], n: int, conc: int) -> dict:
    import httpx

    deadline = time.monotonic() + TIME_LIMIT_S

    def worker(w: int) -> list[float]:
        lat = []
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            for i in range(w, n, conc):
                if time.monotonic() > deadline:
                    break
                name, data = images[i % len(images)]
                start = time.perf_counter()
                resp = client.post(f"/v1/models/{model_id}/predict", files=[("files", (name, data, "image/png"))])
                resp.raise_for_status()
                lat.append(time.perf_counter() - start)
        return lat

    start = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        results = list(pool.map(worker, range(conc)))
    wall = time.perf_counter() - start
    lat = [x for r in results for x in r]
    return {**percentiles(lat), "requests_per_s": round(len(lat) / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    data_dir = isolated_env()
    from core.db import session_scope
    from core.sample_data import default_source, iter_labelled_pngs
    from core.tenancy import create_api_key

    tenant_id, model_id = train_probe()
    with session_scope() as s:
        key = create_api_key(s, "bench")
    images = [(n, d) for n, _, d in iter_labelled_pngs(default_source(), 5, seed=4242)]
    with api_server(data_dir) as (base, _):
        http_load(base, key, model_id, images, 20, 1)  # warm-up: loads the engine and head in the server
        b = bare(tenant_id, model_id, images, args.requests)
        c1 = http_load(base, key, model_id, images, args.requests, 1)
        c8 = http_load(base, key, model_id, images, args.requests * 2, 8)
    write_result(
        "predict",
        {
            "backbone": "efficientnet_lite0",
            "head": "logistic",
            "image": "28x28 PNG (Fashion-MNIST)",
            "bare_in_process": b,
            "http_concurrency_1": c1,
            "http_concurrency_8": c8,
            "c1_p50_vs_bare_p50": round(c1["p50_ms"] / b["p50_ms"], 3),
            "c8_vs_c1_throughput": round(c8["requests_per_s"] / c1["requests_per_s"], 2),
            "targets": {"c1_p50_vs_bare_p50": "<= 1.15", "c8_vs_c1_throughput": ">= 1.5"},
        },
    )


if __name__ == "__main__":
    main()
