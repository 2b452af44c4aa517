"""Scores to probabilities and probabilities to rankings, the one copy used by heads, engines and serving."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax, as ``sklearn.utils.extmath.softmax`` computes it (same order of operations)."""
    scores = scores - scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable ``(label, probability)`` pairs per row, best first (ties keep label order)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    order = np.argsort(-probs, axis=1, kind="stable")[:, : min(k, len(labels))]
    return [[(str(labels[j]), float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]
