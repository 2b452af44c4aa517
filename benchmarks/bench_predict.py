"""Prediction latency and throughput over loopback HTTP against the bare in-process path, in one run.

A logistic head is fitted on efficientnet_lite0 features of real images; then, with new real images:
* bare: decode + forward + head in this process, one image at a time, and in batches of 8 (the engine's own
  batched throughput, at the same ONNX Runtime threads as the server);
* HTTP at concurrency 1 and 8 against ``tlserve api`` on 127.0.0.1 (micro-batching on), with the CPU the
  load generator (this process) and the server used meanwhile, as a share of the machine's cores.
Every loop is bounded in count and in time.

    .venv/bin/python benchmarks/bench_predict.py --requests 200
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import (
    api_server,
    ingest_sample,
    isolated_env,
    process_cpu_seconds,
    rate_limit_storage,
    run_job_here,
    write_result,
)

TIME_LIMIT_S = 120.0


def train_probe() -> tuple[str, str]:
    """(tenant id, model id) of a linear probe on 300 Fashion-MNIST images (digits without the package),
    every job run to its end here, so the server has none left to run during the measurement."""
    from core.db import session_scope
    from core.models import create_model
    from core.sample_data import default_source
    from workers.jobs.fit import fit_job
    from workers.plan import training_params

    params = {"val_fraction": 0.0, "test_fraction": 0.0, "seed": 0}
    tenant_id, dataset_id, _ = ingest_sample(default_source(), 30, params)
    with session_scope() as s:
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
    run_job_here(job_id, fit_job)
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


def bare_batched(tenant_id: str, model_id: str, images: list[tuple[str, bytes]], n: int, size: int) -> dict:
    """Images/s of decode + forward + head on batches of ``size`` in this process, one thread of Python."""
    from workers.runtime.inference import decode_files
    from workers.runtime.serving import PREDICTORS

    predictor = PREDICTORS.get(tenant_id, model_id)
    batches = [[images[(i + j) % len(images)] for j in range(size)] for i in range(0, n, size)]
    predictor.predict_proba(decode_files(batches[0], predictor.spec).pixels)  # warm-up at this batch size
    done, deadline, start = 0, time.monotonic() + TIME_LIMIT_S, time.perf_counter()
    for files in batches:
        if time.monotonic() > deadline:
            break
        predictor.predict_proba(decode_files(files, predictor.spec).pixels)
        done += len(files)
    return {"batch_size": size, "images": done, "images_per_s": round(done / (time.perf_counter() - start), 1)}


def http_load(
    base: str, server_pid: int, key: str, model_id: str, images: list[tuple[str, bytes]], n: int, conc: int
) -> dict:
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

    cores = os.cpu_count() or 1
    cpu_before = time.process_time(), process_cpu_seconds(server_pid)
    start = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        results = list(pool.map(worker, range(conc)))
    wall = time.perf_counter() - start
    load_cpu, server_cpu = time.process_time() - cpu_before[0], process_cpu_seconds(server_pid) - cpu_before[1]
    lat = [x for r in results for x in r]
    return {
        **percentiles(lat),
        "requests_per_s": round(len(lat) / wall, 1),
        "load_generator_cpu_share": round(load_cpu / (wall * cores), 3),
        "server_cpu_share": round(server_cpu / (wall * cores), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    data_dir = isolated_env()
    from core.db import session_scope
    from core.sample_data import default_source, iter_labelled_pngs
    from core.settings import get_settings
    from core.tenancy import create_api_key

    tenant_id, model_id = train_probe()
    with session_scope() as s:
        key = create_api_key(s, "bench")
    source = default_source()
    images = [(n, d) for n, _, d in iter_labelled_pngs(source, 5, seed=4242)]
    with api_server(data_dir) as (base, server):
        http_load(base, server.pid, key, model_id, images, 20, 1)  # warm-up: loads the engine and head there
        b = bare(tenant_id, model_id, images, args.requests)
        b8 = bare_batched(tenant_id, model_id, images, args.requests * 2, 8)
        c1 = http_load(base, server.pid, key, model_id, images, args.requests, 1)
        c8 = http_load(base, server.pid, key, model_id, images, args.requests * 2, 8)
    side = {"fashion": 28, "digits": 8}[source]
    write_result(
        "predict",
        {
            "backbone": "efficientnet_lite0",
            "head": "logistic",
            "rate_limit_storage": "redis" if rate_limit_storage().startswith("redis") else "memory",
            "image": f"{side}x{side} PNG ({'Fashion-MNIST' if source == 'fashion' else 'scikit-learn digits'})",
            "threads": {"ort": get_settings().ort_threads, "inference": get_settings().inference_threads},
            "bare_in_process": b,
            "bare_batched_in_process": b8,
            "http_concurrency_1": c1,
            "http_concurrency_8": c8,
            "c1_p50_vs_bare_p50": round(c1["p50_ms"] / b["p50_ms"], 3),
            "c8_vs_bare_batched_throughput": round(c8["requests_per_s"] / b8["images_per_s"], 2),
            "c8_vs_c1_throughput": round(c8["requests_per_s"] / c1["requests_per_s"], 2),
            "targets": {"c1_p50_vs_bare_p50": "<= 1.15", "c8_vs_bare_batched_throughput": ">= 0.9"},
        },
    )


if __name__ == "__main__":
    main()
