"""Ingestion throughput on real images: the ingestion job (read zip under limits, decode and validate
every image, store original + canonical copy, split, publish) over N Fashion-MNIST images (or digits).

    .venv/bin/python benchmarks/bench_ingest.py --images 3000
"""

from __future__ import annotations

import argparse
import time

from common import isolated_env, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    isolated_env()
    from core import jobs
    from core.datasets import create_dataset, upload_key
    from core.db import session_scope
    from core.sample_data import class_folder_zip, default_source
    from core.storage import get_storage
    from core.tenancy import get_or_create_tenant
    from workers.datasets import ingest_job

    source = default_source()
    archive = class_folder_zip(source, per_class=args.images // 10)
    params = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}
    with session_scope() as s:
        tenant = get_or_create_tenant(s, "bench")
        dataset, version = create_dataset(s, tenant.id, "bench", params)
        job = jobs.create_job(s, tenant_id=tenant.id, kind="ingest")
        key = upload_key(tenant.id, job.id)
        job.params = {"mode": "archive", "upload_key": key, "dataset_id": dataset.id, "version_id": version.id,
                      **params}
    get_storage().put_bytes(key, archive)
    ctx = jobs.begin_attempt(job.id)
    start = time.perf_counter()
    metrics = ingest_job(ctx)
    seconds = time.perf_counter() - start
    write_result("ingest", {
        "source": source, "images": metrics["images"], "archive_bytes": len(archive), "seconds": round(seconds, 2),
        "images_per_s": round(metrics["images"] / seconds, 1),
    })


if __name__ == "__main__":
    main()
