"""Which unlabelled images to label next: uncertainty sampling on a probe's class probabilities (margin,
entropy) and k-center greedy coreset selection on the features. Pure numpy; no model, storage or HTTP."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Strategy = Literal["margin", "entropy", "coreset"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
_CHUNK = 4096  # rows of the pool per distance block: memory stays at _CHUNK × labelled floats


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (0: the probe cannot tell its two best classes apart)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy per row, in nats (log of the class count: the probe has no idea)."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(probs), 0.0)
    return -terms.sum(axis=1)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), so that distances compare directions."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def k_center_greedy(pool: np.ndarray, labelled: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sener & Savarese's k-center greedy: repeatedly pick the pool point farthest from everything labelled
    or picked so far. Returns (indices into ``pool`` in the order picked, each one's distance to its
    nearest centre when it was picked). Euclidean distance on the rows as given; with nothing labelled the
    first pick is the point farthest from the pool's mean."""
    pool = np.asarray(pool, dtype=np.float32)
    labelled = np.asarray(labelled, dtype=np.float32).reshape(-1, pool.shape[1] if pool.ndim == 2 else 0)
    k = min(int(k), len(pool))
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    centres = labelled if len(labelled) else pool.mean(axis=0, keepdims=True)
    nearest = _min_distance(pool, centres)
    sq = (pool.astype(np.float64) ** 2).sum(axis=1)
    picked, values = np.zeros(k, dtype=np.int64), np.zeros(k)
    for step in range(k):
        i = int(np.argmax(nearest))  # the first of equals: deterministic
        picked[step], values[step] = i, float(nearest[i])
        d2 = sq + sq[i] - 2.0 * (pool @ pool[i]).astype(np.float64)  # one matrix-vector product per pick
        nearest = np.minimum(nearest, np.sqrt(np.maximum(d2, 0.0)))
        nearest[i] = -1.0  # never picked twice (a duplicate of a picked point sits at 0 and follows it)
    return picked, values


def _min_distance(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    sq_c = (centres.astype(np.float64) ** 2).sum(axis=1)
    out = np.empty(len(points))
    for start in range(0, len(points), _CHUNK):
        block = points[start : start + _CHUNK]
        cross = (block @ centres.T).astype(np.float64)  # float32 product: the bulk of the work
        d2 = (block.astype(np.float64) ** 2).sum(axis=1)[:, None] + sq_c[None, :] - 2.0 * cross
        out[start : start + _CHUNK] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def rank(
    strategy: Strategy,
    k: int,
    *,
    probs: np.ndarray | None = None,
    pool_features: np.ndarray | None = None,
    labelled_features: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` pool rows to label first and each one's ranking value, best first: margin (smallest
    first), entropy (largest first), coreset (k-center greedy on unit-length features, relative to the
    labelled rows; the value is the distance to the nearest centre when picked). Ties keep pool order."""
    if strategy == "coreset":
        if pool_features is None:
            raise ValueError("coreset needs the pool's features")
        labelled = labelled_features if labelled_features is not None else np.zeros((0, pool_features.shape[1]))
        return k_center_greedy(normalise(pool_features), normalise(labelled), k)
    if probs is None:
        raise ValueError(f"{strategy} needs the probe's class probabilities")
    if strategy == "margin":
        values = margin(probs)
        order = np.argsort(values, kind="stable")
    elif strategy == "entropy":
        values = entropy(probs)
        order = np.argsort(-values, kind="stable")
    else:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    order = order[: max(0, int(k))]
    return order, values[order]
