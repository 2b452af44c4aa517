"""Time ``fit_head``'s C search against a plain 5-fold x 5-C ``GridSearchCV``, in one run.

Data (``--data``), 10,000 train + 2,000 test samples x 1,280 float32 features, 10 classes:

* ``fashion``: real Fashion-MNIST product photos (Debian's ``dataset-fashion-mnist``) through one
  fixed random ReLU layer to 1,280 dims: non-negative, correlated, hard for lbfgs, like pooled CNN
  activations (the service's features, which need torch to compute, have the same shape);
* ``synthetic``: ``make_classification`` (64 informative + 64 redundant dims, 10 classes).

Usage: ``.venv/bin/python benchmarks/bench_head_fit.py [--data fashion|synthetic] [--skip-grid]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, write_result
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from classifiers.heads import HeadConfig
from classifiers.search import fit_head

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
GRID_CS = [0.001, 0.01, 0.1, 1.0, 10.0]

Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def fashion_features(n_train: int, n_test: int, dim: int, seed: int) -> Data:
    """Real photos, random-ReLU features: realistic difficulty without torch or a download."""
    images = _idx(FASHION_MNIST / "train-images-idx3-ubyte.gz")
    labels = _idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(labels))[: n_train + n_test]
    pixels = images[pick].reshape(len(pick), -1).astype(np.float32) / 255
    pixels = (pixels - pixels.mean(axis=0)) / pixels.std()
    weights = rng.standard_normal((pixels.shape[1], dim), dtype=np.float32) / np.sqrt(pixels.shape[1])
    bias = 0.5 * rng.standard_normal(dim, dtype=np.float32)
    features = np.maximum(pixels @ weights + bias, 0).astype(np.float32)
    y = np.array([str(v) for v in labels[pick]])
    return features[:n_train], y[:n_train], features[n_train:], y[n_train:]


def synthetic_features(n_train: int, n_test: int, dim: int, seed: int) -> Data:
    X, y = make_classification(
        n_samples=n_train + n_test,
        n_features=dim,
        n_informative=64,
        n_redundant=64,
        n_classes=10,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=seed,
    )
    X, y = X.astype(np.float32), y.astype(str)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def time_fit_head(data: Data, seed: int) -> dict[str, Any]:
    X, y, X_test, y_test = data
    load, cpu = os.getloadavg()[0], time.process_time()
    result = fit_head(X, y, HeadConfig(seed=seed))
    return {
        "seconds": round(result.fit_seconds, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "search_seconds": round(result.search_seconds, 2),
        "C": result.params["C"],
        "grid_points_evaluated": len(result.cv_results),
        "cv_scheme": result.cv_scheme,
        "test_accuracy": round(float(np.mean(result.pipeline.predict(X_test) == y_test)), 4),
        "load_before": round(load, 2),
    }


def time_grid_search(data: Data, blas_threads: int | None) -> dict[str, Any]:
    """The obvious way: GridSearchCV over Pipeline(StandardScaler, LogisticRegression), defaults, with the
    same parallelism as the service's search (``HeadConfig.n_jobs`` candidate fits at once).

    Run on one BLAS thread per fit by default, like ``fit_head``: on this machine that is the faster
    setting for lbfgs, and two threads collapse when another process is busy.
    """
    from classifiers.heads import HeadConfig

    X, y, X_test, y_test = data
    load, cpu = os.getloadavg()[0], time.process_time()
    grid = GridSearchCV(
        Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression())]),
        {"clf__C": GRID_CS},
        cv=5,
        n_jobs=HeadConfig().n_jobs,
    )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=blas_threads):
        warnings.simplefilter("always", ConvergenceWarning)
        grid.fit(X, y)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "blas_threads": blas_threads or "default",
        "n_jobs": grid.n_jobs,
        "C": grid.best_params_["clf__C"],
        "test_accuracy": round(float(np.mean(grid.predict(X_test) == y_test)), 4),
        "convergence_warnings": sum(issubclass(w.category, ConvergenceWarning) for w in caught),
        "load_before": round(load, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", choices=["fashion", "synthetic"], default="fashion" if FASHION_MNIST.exists() else "synthetic"
    )
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument("--n-test", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-grid", action="store_true", help="time fit_head only")
    parser.add_argument(
        "--baseline-threads", type=int, default=1, help="BLAS threads for GridSearchCV (0: the library default)"
    )
    args = parser.parse_args()

    info = {**machine(), "load_average": os.getloadavg()}
    print("machine:", json.dumps(info))
    make = fashion_features if args.data == "fashion" else synthetic_features
    data = make(args.n_train, args.n_test, args.dim, args.seed)
    print(
        f"data: {args.data}, train {data[0].shape} {data[0].dtype}, test {data[2].shape}, "
        f"{len(np.unique(data[1]))} classes"
    )

    results: dict[str, Any] = {"machine": info, "data": args.data, "shape": list(data[0].shape)}
    results["fit_head"] = time_fit_head(data, args.seed)
    print("fit_head (warm-started 3-fold C path):", json.dumps(results["fit_head"]))
    if not args.skip_grid:
        ours, grid = results["fit_head"], time_grid_search(data, args.baseline_threads or None)
        results["grid_search"] = grid
        print(f"GridSearchCV 5-fold x {len(GRID_CS)} C:", json.dumps(grid))
        print(
            f"speed-up {grid['seconds'] / ours['seconds']:.1f}x, test accuracy "
            f"{ours['test_accuracy']:.4f} vs {grid['test_accuracy']:.4f} "
            f"({100 * (ours['test_accuracy'] - grid['test_accuracy']):+.2f} pt); "
            f"load average now {os.getloadavg()[0]:.2f}"
        )
    write_result("head_fit", results)


if __name__ == "__main__":
    main()
