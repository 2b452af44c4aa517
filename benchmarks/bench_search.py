"""Similarity search on real features: efficientnet_lite0 features of N Fashion-MNIST training images (the
index) and of Q test images (the queries), L2-normalised (cosine). Exact search (FAISS ``IndexFlatIP``) is
the ground truth; FAISS HNSW and usearch HNSW at the same graph degree are measured against it: build
time, queries/s one query per call (as the search endpoint asks) and in one batch, and recall@10.

    .venv/bin/python benchmarks/bench_search.py --vectors 10000 --queries 500
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import fashion_features, isolated_env, write_result

K = 10


def timed_queries(search, queries: np.ndarray) -> tuple[np.ndarray, float, float]:  # type: ignore[no-untyped-def]
    """(top-k rows, queries/s one at a time, queries/s as one batch)."""
    search(queries[:5])  # warm-up
    start = time.perf_counter()
    for q in queries:
        search(q[None, :])
    single = len(queries) / (time.perf_counter() - start)
    start = time.perf_counter()
    rows = search(queries)
    batch = len(queries) / (time.perf_counter() - start)
    return rows, single, batch


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    isolated_env()
    import faiss
    from usearch.index import Index

    from workers.runtime.similarity import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, normalise

    start = time.perf_counter()
    base = normalise(fashion_features("train", args.vectors, seed=0)[0])
    queries = normalise(fashion_features("t10k", args.queries, seed=1)[0])
    extract_s = time.perf_counter() - start
    dim = base.shape[1]
    results = {}

    flat = faiss.IndexFlatIP(dim)
    start = time.perf_counter()
    flat.add(base)
    build = time.perf_counter() - start
    truth, single, batch = timed_queries(lambda q: flat.search(q, K)[1], queries)
    results["exact_faiss_flat"] = {
        "build_s": round(build, 3),
        "qps_single": round(single),
        "qps_batch": round(batch),
        "recall_at_10": 1.0,
    }

    for ef in (32, HNSW_EF_SEARCH):
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        start = time.perf_counter()
        hnsw.add(base)
        build = time.perf_counter() - start
        hnsw.hnsw.efSearch = ef
        found, single, batch = timed_queries(lambda q, h=hnsw: h.search(q, K)[1], queries)
        results[f"faiss_hnsw_ef{ef}"] = {
            "build_s": round(build, 3),
            "qps_single": round(single),
            "qps_batch": round(batch),
            "recall_at_10": round(recall(found, truth), 4),
        }

    for ef in (32, HNSW_EF_SEARCH):
        index = Index(
            ndim=dim,
            metric="cos",
            dtype="f32",
            connectivity=HNSW_M,
            expansion_add=HNSW_EF_CONSTRUCTION,
            expansion_search=ef,
        )
        start = time.perf_counter()
        index.add(np.arange(len(base)), base)
        build = time.perf_counter() - start

        def search(q: np.ndarray, idx: Index = index) -> np.ndarray:
            return np.atleast_2d(idx.search(q, K).keys)

        found, single, batch = timed_queries(search, queries)
        results[f"usearch_hnsw_ef{ef}"] = {
            "build_s": round(build, 3),
            "qps_single": round(single),
            "qps_batch": round(batch),
            "recall_at_10": round(recall(found, truth), 4),
        }

    write_result(
        "search",
        {
            "features": f"efficientnet_lite0 (1280-d) of {args.vectors} Fashion-MNIST training images; "
            f"{args.queries} test images as queries",
            "extraction_s": round(extract_s, 1),
            "faiss_threads": faiss.omp_get_max_threads(),
            "k": K,
            "hnsw": {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION},
            "indexes": results,
            "target": "recall@10 >= 0.95",
        },
    )


if __name__ == "__main__":
    main()
