"""Linear heads on feature vectors: numpy and scikit-learn only (no HTTP, queue, database or torch).

Names are imported lazily so that a serving process using ``LinearHead``/``load_head`` never
imports scikit-learn (1.2 s and ~95 MB here).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_HOME = {
    "HeadConfig": "heads",
    "SoftmaxRidgeClassifier": "heads",
    "build_pipeline": "heads",
    "classification_metrics": "metrics",
    "evaluate": "metrics",
    "generalization_report": "metrics",
    "training_accuracy": "metrics",
    "export_head": "persistence",
    "load_head": "persistence",
    "save_head": "persistence",
    "HeadFormatError": "predict",
    "LinearHead": "predict",
    "FitResult": "search",
    "fit_head": "search",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'classifiers' has no attribute {name!r}")
    return getattr(import_module(f"classifiers.{_HOME[name]}"), name)
