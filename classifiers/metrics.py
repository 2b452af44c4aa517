"""Metrics of a fitted head, as JSON-ready dicts, and training vs held-out accuracy side by side.

Works with anything that has ``predict`` (a scikit-learn pipeline or a ``LinearHead``); labels are
compared as strings so the two give the same report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


class Predictor(Protocol):
    def predict(self, X: Any) -> np.ndarray: ...


def evaluate(model: Predictor, X: Any, y: Any, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """``classification_metrics`` of ``model``'s predictions on ``X`` against ``y``.

    ``labels`` fixes the order of rows/columns (default: the model's ``classes_``).
    """
    order = labels if labels is not None else getattr(model, "classes_", None)
    if order is None:
        raise ValueError("give labels, or a model with classes_")
    return classification_metrics(y, model.predict(X), order)


def classification_metrics(y_true: Any, y_pred: Any, labels: Sequence[str]) -> dict[str, Any]:
    """``accuracy``, ``macro_f1``, ``per_class``, ``confusion_matrix`` (rows = true) and ``labels``.

    Every true and predicted label must be among ``labels``, so no sample silently drops out of the
    confusion matrix.
    """
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    order = [str(label) for label in labels]
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or not y_true.size:
        raise ValueError(f"need equal, non-empty 1-D label arrays, got {y_true.shape} and {y_pred.shape}")
    if len(set(order)) != len(order):
        raise ValueError("labels must be distinct")
    seen = set(y_true) | set(y_pred)
    missing = sorted(seen - set(order))
    if missing:
        raise ValueError(f"labels {missing} occur in y or the predictions but not in labels")
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=order, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # As f1_score(average="macro"): over the labels that occur in y or the predictions; a class
        # absent from both says nothing about the head and is not counted as F1 = 0.
        "macro_f1": float(np.mean([f for label, f in zip(order, f1, strict=True) if label in seen])),
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(order, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=order).tolist(),
        "labels": order,
    }


def training_accuracy(model: Predictor, X: Any, y: Any) -> float:
    """Accuracy on the data the head was fitted on: the training-error side of the gap."""
    return float(np.mean(np.asarray(model.predict(X)).astype(str) == np.asarray(y).astype(str)))


def generalization_report(model: Predictor, X_train: Any, y_train: Any, X_test: Any, y_test: Any) -> dict[str, float]:
    """Training and test accuracy/error and their gap, to tell under- from over-fitting."""
    train = training_accuracy(model, X_train, y_train)
    test = training_accuracy(model, X_test, y_test)
    return {
        "train_accuracy": train,
        "test_accuracy": test,
        "train_error": 1.0 - train,
        "test_error": 1.0 - test,
        "generalization_gap": train - test,
    }
