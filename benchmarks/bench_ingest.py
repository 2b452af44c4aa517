"""Ingestion throughput on real images: the ingestion job (read zip under limits, decode and validate
every image, store original + canonical copy, split, publish) over N Fashion-MNIST images (or digits).

    .venv/bin/python benchmarks/bench_ingest.py --images 3000
"""

from __future__ import annotations

import argparse

from common import ingest_sample, isolated_env, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    isolated_env()
    from core.sample_data import default_source

    source = default_source()
    params = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}
    _, _, metrics = ingest_sample(source, args.images // 10, params)
    seconds = metrics["seconds"]
    write_result(
        "ingest",
        {
            "source": source,
            "images": metrics["images"],
            "archive_bytes": metrics["archive_bytes"],
            "seconds": round(seconds, 2),
            "images_per_s": round(metrics["images"] / seconds, 1),
        },
    )


if __name__ == "__main__":
    main()
