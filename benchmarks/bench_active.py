"""Which images to label next, on real data: efficientnet_lite0 features of Fashion-MNIST (a pool drawn
from the training images, a fixed test set from t10k). Per seed, a probe (the service's head code, C by
cross-validation) is fitted on a small random labelled set; 100 more labels are then chosen by each
strategy of ``classifiers.active`` (margin, entropy, coreset) or at random, the probe is refitted on the
larger set, and its test accuracy is recorded. Averaged over seeds.

    .venv/bin/python benchmarks/bench_active.py --pool 3000 --test 1000 --start 100 --add 100 --seeds 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import fashion_features, isolated_env, write_result


def fit(X: np.ndarray, y: np.ndarray, seed: int):  # type: ignore[no-untyped-def]
    from classifiers.heads import HeadConfig
    from classifiers.search import fit_head

    return fit_head(X, y, HeadConfig(seed=seed)).pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=int, default=3000, help="training images to draw labels from")
    parser.add_argument("--test", type=int, default=1000, help="t10k images to measure on")
    parser.add_argument("--start", type=int, default=100, help="labelled images to begin with (random)")
    parser.add_argument("--add", type=int, default=100, help="labels each strategy adds")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    isolated_env()
    from classifiers.active import rank

    t0 = time.perf_counter()
    X, y = fashion_features("train", args.pool, seed=0)
    X_test, y_test = fashion_features("t10k", args.test, seed=1)
    extract_s = time.perf_counter() - t0

    strategies = ("random", "margin", "entropy", "coreset")
    acc: dict[str, list[float]] = {"start": [], **{s: [] for s in strategies}}
    rank_ms: dict[str, list[float]] = {s: [] for s in strategies if s != "random"}
    new_classes: dict[str, list[int]] = {s: [] for s in strategies}
    t1 = time.perf_counter()
    for seed in range(args.seeds):
        rng = np.random.default_rng(100 + seed)
        order = rng.permutation(len(X))
        labelled, pool = order[: args.start], order[args.start :]
        head = fit(X[labelled], y[labelled], seed)
        acc["start"].append(float((head.predict(X_test) == y_test).mean()))
        probs = head.predict_proba(X[pool])
        for strategy in strategies:
            if strategy == "random":
                picked = rng.choice(len(pool), size=args.add, replace=False)
            else:
                start = time.perf_counter()
                picked, _ = rank(strategy, args.add, probs=probs, pool_features=X[pool], labelled_features=X[labelled])
                rank_ms[strategy].append((time.perf_counter() - start) * 1000)
            chosen = np.concatenate([labelled, pool[picked]])
            refit = fit(X[chosen], y[chosen], seed)
            acc[strategy].append(float((refit.predict(X_test) == y_test).mean()))
            new_classes[strategy].append(int(len(set(y[pool[picked]]))))
    loop_s = time.perf_counter() - t1

    def summary(values: list[float]) -> dict[str, float]:
        return {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4)}

    write_result(
        "active",
        {
            "data": "Fashion-MNIST (real), efficientnet_lite0 features (ONNX Runtime), logistic head with C by CV",
            "pool": args.pool,
            "test": args.test,
            "start_labels": args.start,
            "added_labels": args.add,
            "seeds": args.seeds,
            "test_accuracy": {k: summary(v) for k, v in acc.items()},
            "gain_over_random": {
                s: round(float(np.mean(acc[s]) - np.mean(acc["random"])), 4) for s in strategies if s != "random"
            },
            "per_seed": {k: [round(v, 4) for v in vals] for k, vals in acc.items()},
            "classes_among_added": {s: round(float(np.mean(v)), 2) for s, v in new_classes.items()},
            "rank_ms": {s: round(float(np.mean(v)), 1) for s, v in rank_ms.items()},
            "extract_s": round(extract_s, 1),
            "fit_loop_s": round(loop_s, 1),
        },
    )


if __name__ == "__main__":
    main()
