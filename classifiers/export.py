"""Turn a fitted scikit-learn head pipeline into plain arrays + JSON metadata (see ``predict``).

Kept apart from ``persistence`` so that loading a head never imports scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from classifiers.linear_head import FORMAT, FORMAT_VERSION, LinearHead

Arrays = dict[str, np.ndarray]


def export_pipeline(pipeline: Pipeline) -> tuple[Arrays, dict[str, Any]]:
    """Arrays and metadata that ``LinearHead`` turns back into the pipeline's exact predictions.

    Supports ``[StandardScaler] -> [PCA] -> clf`` with clf a ``LogisticRegression``,
    ``RidgeClassifier``, ``SGDClassifier(loss="log_loss")`` or a sigmoid
    ``CalibratedClassifierCV(LinearSVC, ensemble=False)``. The calibrated SVM is exported exactly,
    not approximated: with ``ensemble=False`` it is one SVM (W, b) and one Platt sigmoid (a_k, b_k)
    per class, normalised over classes; an ensemble of per-fold SVMs is refused.
    """
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"expected a fitted sklearn Pipeline, got {type(pipeline).__name__}")
    arrays: Arrays = {}
    _export_transforms(pipeline.steps[:-1], arrays)
    clf = pipeline.steps[-1][1]
    head_type, link, predict_from = _export_classifier(clf, arrays)
    n_features = pipeline.n_features_in_ if hasattr(pipeline, "n_features_in_") else clf.n_features_in_
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "head_type": head_type,
        "link": link,
        "predict_from": predict_from,
        "classes": [str(c) for c in clf.classes_],
        "n_features_in": int(n_features),
        "sklearn_version": sklearn.__version__,
    }
    LinearHead(arrays, meta)  # validate now rather than at load time
    return arrays, meta


def _export_transforms(steps: list[tuple[str, Any]], arrays: Arrays) -> None:
    order = []
    for name, step in steps:
        if step is None or step == "passthrough":
            continue
        if isinstance(step, StandardScaler):
            n = step.n_features_in_
            # mean_ may be computed but unused (with_mean=False): export what transform applies.
            arrays["scale_mean"] = np.asarray(step.mean_) if step.with_mean else np.zeros(n)
            arrays["scale_scale"] = np.asarray(step.scale_) if step.with_std else np.ones(n)
            order.append("scale")
        elif isinstance(step, PCA):
            arrays["pca_components"] = _copy(step.components_)
            arrays["pca_mean"] = np.asarray(step.mean_)
            variance = step.explained_variance_ if step.whiten else np.ones_like(step.explained_variance_)
            arrays["pca_explained_variance"] = np.asarray(variance)
            order.append("pca")
        else:
            raise ValueError(f"cannot export pipeline step {name!r} ({type(step).__name__})")
    if order not in ([], ["scale"], ["pca"], ["scale", "pca"]):
        raise ValueError(f"exportable transforms are StandardScaler then PCA, got {order}")


def _export_classifier(clf: BaseEstimator, arrays: Arrays) -> tuple[str, str, str]:
    """Fill coef/intercept (+ calibration); return (head_type, link, predict_from)."""
    if isinstance(clf, CalibratedClassifierCV):
        return _export_calibrated_svm(clf, arrays)
    coef, intercept = _linear(clf)
    if isinstance(clf, RidgeClassifier):
        if coef.shape[0] == 1:  # binary: the two-column fit would be [-z, z]
            coef, intercept = np.concatenate([-coef, coef]), np.concatenate([-intercept, intercept])
        arrays.update(coef=coef, intercept=intercept)
        return "ridge", "softmax", "scores"
    if isinstance(clf, LogisticRegression) and len(clf.classes_) > 2:
        arrays.update(coef=coef, intercept=intercept)
        return "logistic", "softmax", "scores"
    if isinstance(clf, LogisticRegression) or (isinstance(clf, SGDClassifier) and clf.loss == "log_loss"):
        # One-vs-rest sigmoids normalised over classes (sklearn's _predict_proba_lr): a=-1, b=0.
        arrays.update(
            coef=coef,
            intercept=intercept,
            calib_a=-np.ones(len(coef), coef.dtype),
            calib_b=np.zeros(len(coef), coef.dtype),
        )
        return ("logistic" if isinstance(clf, LogisticRegression) else "sgd"), "ovr_sigmoid", "scores"
    raise ValueError(f"cannot export classifier {type(clf).__name__} (see export_head for the supported)")


def _export_calibrated_svm(clf: CalibratedClassifierCV, arrays: Arrays) -> tuple[str, str, str]:
    if clf.method != "sigmoid" or len(clf.calibrated_classifiers_) != 1:
        raise ValueError("export needs CalibratedClassifierCV(method='sigmoid', ensemble=False)")
    calibrated = clf.calibrated_classifiers_[0]
    svm = calibrated.estimator
    if not isinstance(svm, LinearSVC) or not np.array_equal(svm.classes_, clf.classes_):
        raise ValueError("export needs a LinearSVC fitted on every class inside the calibration")
    coef, intercept = _linear(svm)
    arrays.update(
        coef=coef,
        intercept=intercept,
        calib_a=np.array([c.a_ for c in calibrated.calibrators], dtype=np.float64),
        calib_b=np.array([c.b_ for c in calibrated.calibrators], dtype=np.float64),
    )
    return "linear_svm", "ovr_sigmoid", "proba"


def _linear(clf: BaseEstimator) -> tuple[np.ndarray, np.ndarray]:
    coef = _copy(np.atleast_2d(clf.coef_))
    intercept = np.broadcast_to(np.asarray(clf.intercept_, dtype=coef.dtype), (coef.shape[0],))
    return coef, intercept.copy()


def _copy(array: np.ndarray) -> np.ndarray:
    """A copy in the source's memory order (npz keeps Fortran order): BLAS then sums in the same
    order as scikit-learn, so float32 scores match bit for bit instead of to ~1e-6."""
    return np.array(array, copy=True, order="K")
