"""Ingestion throughput on real images: the ingestion job (read the zip under limits, decode and validate
every image, store the original and its canonical copy, split, publish) over N Fashion-MNIST images (or
digits) at their own 28 px and enlarged to 300 × 300 PNGs (the size of photos people upload), with the
job's decode threads at 1 and at the default.

    .venv/bin/python benchmarks/bench_ingest.py --images 3000
"""

from __future__ import annotations

import argparse
import os

from common import ingest_sample, isolated_env, write_result


def run(source: str, per_class: int, side: int | None, threads: int) -> dict:
    os.environ["TLSERVE_INGEST_THREADS"] = str(threads)
    isolated_env()  # a fresh data folder and settings for each run
    params = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}
    _, _, metrics = ingest_sample(source, per_class, params, side=side)
    seconds = metrics["seconds"]
    return {
        "side": side or 28,
        "ingest_threads": threads,
        "images": metrics["images"],
        "archive_bytes": metrics["archive_bytes"],
        "seconds": round(seconds, 2),
        "images_per_s": round(metrics["images"] / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2, help="the service's default ingest_threads")
    args = parser.parse_args()
    isolated_env()
    from core.sample_data import default_source

    source = default_source()
    per_class = args.images // 10
    runs = [run(source, per_class, side, threads) for side in (None, 300) for threads in sorted({1, args.threads})]
    write_result("ingest", {"source": source, "runs": runs})


if __name__ == "__main__":
    main()
