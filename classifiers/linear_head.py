"""numpy-only inference for an exported linear head: no scikit-learn, no pickle, microseconds a sample.

A head is ``standardise -> (PCA whiten) -> scores = x @ W.T + b -> link``, where the link is one of

* ``softmax``: multinomial logistic regression, and ridge (softmax of its scores; binary ridge is
  exported as the two rows ``[-w, w]``);
* ``ovr_sigmoid``: ``p_k = sigmoid(-(a_k s_k + b_k))``, normalised over classes; one row when binary
  (``[1 - p, p]``). Platt-calibrated linear SVM (a, b fitted), and the one-vs-rest logistic models
  (sgd, binary logistic) with ``a = -1, b = 0``.

Every operation mirrors the scikit-learn code it replaces, in the same order and dtype, so labels are
identical and probabilities agree to rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from classifiers.scores import softmax, top_k

FORMAT = "tlserve.linear_head"
FORMAT_VERSION = 1
LINKS = ("softmax", "ovr_sigmoid")
PREDICT_FROM = ("scores", "proba")
ARRAY_KEYS = frozenset(
    {
        "coef",
        "intercept",
        "scale_mean",
        "scale_scale",
        "pca_components",
        "pca_mean",
        "pca_explained_variance",
        "calib_a",
        "calib_b",
    }
)


class HeadFormatError(ValueError):
    """Stored head data that is malformed, of another format, or unsafe to load."""


class LinearHead:
    """A fitted linear head as plain arrays; ``predict``/``predict_proba`` match the source pipeline."""

    def __init__(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.meta = validate_meta(meta)
        self.arrays = _check_arrays(arrays, self.meta)
        self.classes_ = np.asarray(self.meta["classes"], dtype=str)
        self.n_features_in_ = int(self.meta["n_features_in"])

    def transform(self, X: Any) -> np.ndarray:
        """The features the linear model sees: standardised, then PCA-whitened if exported so."""
        X = _as_float(X, self.n_features_in_)
        a = self.arrays
        if "scale_mean" in a:  # StandardScaler.transform, in place on a copy
            X -= a["scale_mean"].astype(X.dtype)
            X /= a["scale_scale"].astype(X.dtype)
        if "pca_components" in a:  # PCA._transform: project, then centre, then whiten
            Z = X @ a["pca_components"].T
            Z -= a["pca_mean"].reshape(1, -1) @ a["pca_components"].T
            scale = np.sqrt(a["pca_explained_variance"])
            scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
            Z /= scale
            X = Z
        return X

    def decision_function(self, X: Any) -> np.ndarray:
        """Linear scores ``x @ W.T + b`` (one column for a one-row binary head)."""
        return self.transform(X) @ self.arrays["coef"].T + self.arrays["intercept"]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order."""
        return self._proba(self.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        """Labels, decided as the source estimator decides (scores, or calibrated probabilities)."""
        scores = self.decision_function(X)
        if self.meta["predict_from"] == "proba":
            return self.classes_[np.argmax(self._proba(scores), axis=1)]
        if scores.shape[1] == 1:
            return self.classes_[(scores[:, 0] > 0).astype(int)]
        return self.classes_[np.argmax(scores, axis=1)]

    def top_k(self, X: Any, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(label, probability)`` pairs per sample, best first."""
        return top_k(self.predict_proba(X), self.classes_, k)

    def _proba(self, scores: np.ndarray) -> np.ndarray:
        if self.meta["link"] == "softmax":
            return softmax(scores)
        return _ovr_sigmoid(scores, self.arrays["calib_a"], self.arrays["calib_b"])


def _as_float(X: Any, n_features: int) -> np.ndarray:
    """A writable copy, float32 kept as float32 and anything else as float64 (sklearn's rule)."""
    X = np.asarray(X)
    X = np.array(X, dtype=np.float32 if X.dtype == np.float32 else np.float64, order="C", copy=True)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"expected features of shape (n, {n_features}), got {X.shape}")
    return X


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large ``|x|``."""
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def _ovr_sigmoid(scores: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-class sigmoids, normalised: ``CalibratedClassifierCV`` (sigmoid) / ``_predict_proba_lr``."""
    p = _sigmoid(-(a * scores + b))
    if p.shape[1] == 1:
        proba = np.concatenate([1.0 - p, p], axis=1)
    else:
        total = p.sum(axis=1, keepdims=True)
        proba = np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total != 0)
    proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
    return proba


def validate_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``head.json``'s content is this format's, before any array is read."""
    if not isinstance(meta, Mapping):
        raise HeadFormatError("head metadata must be a JSON object")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise HeadFormatError(
            f"not a {FORMAT} v{FORMAT_VERSION} head (format={meta.get('format')!r}, "
            f"version={meta.get('format_version')!r}); only plain arrays are ever loaded"
        )
    classes = meta.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise HeadFormatError("classes must be a list of at least 2 distinct strings")
    if meta.get("link") not in LINKS or meta.get("predict_from") not in PREDICT_FROM:
        raise HeadFormatError(f"link must be one of {LINKS} and predict_from one of {PREDICT_FROM}")
    n = meta.get("n_features_in")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise HeadFormatError("n_features_in must be a positive integer")
    return dict(meta)


def _check_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    unknown = set(arrays) - ARRAY_KEYS
    if unknown:
        raise HeadFormatError(f"unexpected arrays in head: {sorted(unknown)}")
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype not in (np.float32, np.float64) or not np.isfinite(value).all():
            raise HeadFormatError(f"array {key!r} must hold finite float32/float64 values, got {value.dtype}")
        out[key] = value
    _check_shapes(out, meta)
    return out


def _check_shapes(a: dict[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise HeadFormatError(f"inconsistent head arrays: {what}")

    n_in, n_classes = meta["n_features_in"], len(meta["classes"])
    need("coef" in a and "intercept" in a and a["coef"].ndim == 2, "coef (2-D) and intercept are required")
    rows, width = a["coef"].shape
    need(a["intercept"].shape == (rows,), "intercept must have one value per coef row")
    binary_row = meta["link"] == "ovr_sigmoid" and n_classes == 2 and rows == 1
    need(rows == n_classes or binary_row, f"{rows} coef rows for {n_classes} classes")
    need(("scale_mean" in a) == ("scale_scale" in a), "scale_mean and scale_scale go together")
    if "scale_mean" in a:
        need(a["scale_mean"].shape == a["scale_scale"].shape == (n_in,), "scaler arrays of n_features_in")
    pca = [k for k in ("pca_components", "pca_mean", "pca_explained_variance") if k in a]
    need(len(pca) in (0, 3), "PCA needs components, mean and explained_variance")
    if pca:
        k = a["pca_components"].shape[0]
        need(
            a["pca_components"].shape == (k, n_in)
            and a["pca_mean"].shape == (n_in,)
            and a["pca_explained_variance"].shape == (k,),
            "PCA arrays must match n_features_in",
        )
    need(width == (a["pca_components"].shape[0] if pca else n_in), "coef width must match the features")
    calib = meta["link"] == "ovr_sigmoid"
    need(calib == ("calib_a" in a) == ("calib_b" in a), "calib_a/calib_b exactly for ovr_sigmoid")
    if calib:
        need(a["calib_a"].shape == a["calib_b"].shape == (rows,), "one calibration pair per row")
