"""Fit a head, choosing ``C`` by a warm-started, early-stopped search when the config leaves it open.

Why not ``GridSearchCV``: it refits the scaler per candidate and starts every fit from zero. Here each
fold is preprocessed once, then walks the C grid from strong to weak regularisation, each fit starting
from the previous solution (as ``LogisticRegressionCV`` does), folds in parallel threads. The walk stops
two grid steps after the score stops improving, which skips the slow, weakly regularised end.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from classifiers.heads import HeadConfig, build_pipeline, regularization_params

Split = tuple[np.ndarray, np.ndarray]
_Coef = tuple[np.ndarray, np.ndarray]

# A validation split at least this large, holding every training class, is used as the search's
# single holdout (auto mode): one path instead of ``cv_folds``. Measured with 10k train + 2k val
# CNN-like features, 3 seeds: C within half a decade of 3-fold CV's, test accuracy within 0.6 pt
# either way, half the time.
HOLDOUT_MIN_SAMPLES = 2000
# Stop the C walk after this many consecutive grid points without a better mean score.
PATIENCE = 2
FALLBACK_C = 1.0
# lbfgs along the path stops at this multiple of the final fit's tol. Measured on 10k x 1,280
# CNN-like features: 3x cut the path's iterations 2.4x (539 -> 224) with the same C and CV scores
# within 0.4 pt; 10x stalled the walk. The final fit, warm-started, converges to the full tol.
PATH_TOL_FACTOR = 3.0


@dataclass
class FitResult:
    """A fitted head and how it was chosen (all but ``pipeline`` is JSON-friendly)."""

    pipeline: Pipeline
    params: dict[str, Any]
    cv_results: list[dict[str, Any]] = field(default_factory=list)
    cv_scheme: str = "fixed C"
    scoring: str = "accuracy"
    best_score: float | None = None
    fit_seconds: float = 0.0
    search_seconds: float = 0.0


def fit_head(X: Any, y: Any, cfg: HeadConfig, *, X_val: Any = None, y_val: Any = None) -> FitResult:
    """Fit ``cfg``'s head on train (+ val); search ``C`` first when ``cfg.C`` is None.

    Features become float32 (what the feature cache stores; halves memory traffic) and labels
    strings. The returned pipeline is refitted on train+val with the chosen ``C``.
    """
    # One BLAS/OpenMP thread throughout (process-wide while fitting). Measured on the 2-core dev
    # machine, 25 lbfgs iterations on 10k x 1,280: 0.54 s on one thread, 1.1-2.0 s on two when
    # idle, and 4.9-9.9 s on two while another process was busy (one thread held at 0.6 s).
    # Parallelism comes from running the search's folds side by side instead.
    with threadpool_limits(limits=1):
        return _fit_head(X, y, cfg, X_val, y_val)


def _fit_head(X: Any, y: Any, cfg: HeadConfig, X_val: Any, y_val: Any) -> FitResult:
    start = time.perf_counter()
    X_all, y_all, n_train = _concat(X, y, X_val, y_val)
    result = FitResult(pipeline=build_pipeline(cfg, n_samples=len(y_all)), params={})
    C, warm = cfg.C, None
    if C is None:
        splits, result.cv_scheme = choose_splits(y_all, n_train, cfg)
        result.scoring = "balanced_accuracy" if cfg.class_weight == "balanced" else "accuracy"
        C = FALLBACK_C
        if splits:
            C, result.best_score, result.cv_results, warm = _search_C(X_all, y_all, splits, cfg)
        result.search_seconds = time.perf_counter() - start
    fitted_cfg = replace(cfg, C=C)
    result.pipeline = _refit(build_pipeline(fitted_cfg, n_samples=len(y_all)), X_all, y_all, warm)
    result.params = _chosen_params(fitted_cfg, len(y_all))
    result.fit_seconds = time.perf_counter() - start
    return result


def _refit(pipeline: Pipeline, X: np.ndarray, y: np.ndarray, warm: _Coef | None) -> Pipeline:
    """Final fit on all the data, started from the folds' mean solution at the chosen C if given.

    ``LogisticRegression(warm_start=True)`` starts from ``coef_``/``intercept_`` when present; the
    fold models saw standardised features too, so their mean is a close start and saves most of
    the iterations. ``warm_start`` is switched off again so a later ``fit`` starts from zero.
    """
    clf = pipeline[-1]
    if warm is not None:
        clf.set_params(warm_start=True)
        clf.coef_, clf.intercept_ = warm
    pipeline.fit(X, y)
    if warm is not None:
        clf.set_params(warm_start=False)
    return pipeline


def _concat(X: Any, y: Any, X_val: Any, y_val: Any) -> tuple[np.ndarray, np.ndarray, int]:
    X_all = _as_features(X)
    y_all = _as_labels(y, len(X_all))
    n_train = len(y_all)
    if (X_val is None) != (y_val is None):
        raise ValueError("give both X_val and y_val, or neither")
    if X_val is not None:
        Xv = _as_features(X_val)
        if Xv.shape[1] != X_all.shape[1]:
            raise ValueError(f"X_val has {Xv.shape[1]} features, X has {X_all.shape[1]}")
        X_all = np.concatenate([X_all, Xv])
        y_all = np.concatenate([y_all, _as_labels(y_val, len(Xv))])
    if np.unique(y_all).size < 2:
        raise ValueError("a classifier needs samples of at least 2 classes")
    return X_all, y_all, n_train


def _as_features(X: Any) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"features must be a non-empty 2-D array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("features contain NaN or infinity")
    return X


def _as_labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y).astype(str)
    if y.shape != (n,):
        raise ValueError(f"expected {n} labels in a 1-D array, got shape {y.shape}")
    return y


def _chosen_params(cfg: HeadConfig, n_samples: int) -> dict[str, Any]:
    params: dict[str, Any] = {"type": cfg.type, "C": cfg.C, "class_weight": cfg.class_weight}
    for key, value in regularization_params(cfg.type, cfg.C, n_samples).items():
        params[key.rsplit("__", 1)[-1]] = value
    return params


def choose_splits(y: np.ndarray, n_train: int, cfg: HeadConfig) -> tuple[list[Split], str]:
    """Holdout on the val split when asked or when it is large; stratified K-fold otherwise."""
    n_val = len(y) - n_train
    if cfg.search == "holdout" and n_val == 0:
        raise ValueError("search='holdout' needs a validation split (X_val, y_val)")
    train_classes = set(np.unique(y[:n_train]))
    val_big = n_val >= HOLDOUT_MIN_SAMPLES and train_classes <= set(np.unique(y[n_train:]))
    if n_val and (cfg.search == "holdout" or (cfg.search == "auto" and val_big)):
        if len(train_classes) < 2:
            raise ValueError("the training split needs at least 2 classes for a holdout search")
        return [(np.arange(n_train), np.arange(n_train, len(y)))], f"holdout ({n_val} val samples)"
    return stratified_splits(y, cfg.cv_folds, cfg.seed)


def stratified_splits(y: np.ndarray, n_folds: int, seed: int) -> tuple[list[Split], str]:
    """Stratified K-fold, folds reduced to the smallest class; singletons stay in every train fold.

    A class seen once cannot be validated on, but every fold's model must know it exists.
    """
    classes, counts = np.unique(y, return_counts=True)
    alone = np.isin(y, classes[counts == 1])
    always_train, rest = np.flatnonzero(alone), np.flatnonzero(~alone)
    multi = counts[counts >= 2]
    if multi.size == 0 or (multi.size == 1 and always_train.size == 0):
        return [], "none (too few samples per class to validate; C=1.0)"
    k = int(min(n_folds, multi.min()))
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(rest, y[rest])
    splits = [(np.sort(np.concatenate([rest[tr], always_train])), rest[va]) for tr, va in folds]
    note = f", {always_train.size} singleton samples kept in training" if always_train.size else ""
    return splits, f"stratified {k}-fold{note}"


@dataclass
class _Fold:
    """One split's preprocessed data and its warm-started model walking the C path."""

    Z_train: np.ndarray
    y_train: np.ndarray
    Z_val: np.ndarray
    y_val: np.ndarray
    model: BaseEstimator
    coefs: dict[float, _Coef] = field(default_factory=dict)


def _search_C(
    X: np.ndarray, y: np.ndarray, splits: Sequence[Split], cfg: HeadConfig
) -> tuple[float, float, list[dict[str, Any]], _Coef | None]:
    """Walk the C grid (ascending) on every split in lockstep.

    Returns the best C, its mean score, the score table, and (logistic only) the folds' mean
    solution at the best C to warm-start the final fit.
    """
    template = build_pipeline(cfg, n_samples=len(y))
    score = balanced_accuracy_score if cfg.class_weight == "balanced" else accuracy_score
    n_jobs = max(1, min(cfg.n_jobs, len(splits)))
    table: list[dict[str, Any]] = []
    # Path fits stop early on purpose (loose tol, weakly regularised end): their convergence
    # warnings are noise. The final fit warns as usual.
    with warnings.catch_warnings(), Parallel(n_jobs=n_jobs, prefer="threads") as parallel:
        warnings.simplefilter("ignore", ConvergenceWarning)
        folds = parallel(delayed(_prepare_fold)(template, X, y, tr, va) for tr, va in splits)
        for C in sorted(cfg.C_grid):
            fold_scores = parallel(delayed(_fit_score)(f, cfg.type, C, score) for f in folds)
            table.append(_row(C, fold_scores))
            if _stalled(table):
                break
    best = max(table, key=lambda row: row["mean_score"])  # first maximum: the smallest such C
    warm = _mean_coef(folds, best["C"], np.unique(y)) if cfg.type == "logistic" else None
    return best["C"], best["mean_score"], table, warm


def _mean_coef(folds: Sequence[_Fold], C: float, classes: np.ndarray) -> _Coef | None:
    """Mean fold solution at ``C``, if every fold model knows every class (else shapes differ)."""
    if any(not np.array_equal(f.model.classes_, classes) for f in folds):
        return None
    coefs = [f.coefs[C] for f in folds]
    return np.mean([c for c, _ in coefs], axis=0), np.mean([b for _, b in coefs], axis=0)


def _prepare_fold(template: Pipeline, X: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray) -> _Fold:
    pre = clone(template[:-1]) if len(template) > 1 else None
    Z_train = pre.fit_transform(X[tr]) if pre is not None else X[tr]
    Z_val = pre.transform(X[va]) if pre is not None else X[va]
    return _Fold(Z_train, y[tr], Z_val, y[va], _path_model(template[-1]))


def _path_model(clf: BaseEstimator) -> BaseEstimator:
    """The estimator scored along the path: warm-startable where possible.

    For the calibrated SVM, C is chosen on the bare ``LinearSVC`` (argmax of its decision values):
    calibrating every candidate would cost ``cv`` extra SVM fits per grid point.
    """
    model = clone(clf.estimator if isinstance(clf, CalibratedClassifierCV) else clf)
    if "warm_start" in model.get_params():
        model.set_params(warm_start=True)
    if isinstance(model, LogisticRegression):
        model.set_params(tol=model.tol * PATH_TOL_FACTOR)
    return model


def _fit_score(fold: _Fold, head_type: str, C: float, score: Callable[..., float]) -> float:
    params = regularization_params(head_type, C, len(fold.y_train))
    fold.model.set_params(**{key.rsplit("__", 1)[-1]: value for key, value in params.items()})
    fold.model.fit(fold.Z_train, fold.y_train)
    if head_type == "logistic":
        fold.coefs[C] = (fold.model.coef_.copy(), fold.model.intercept_.copy())
    return float(score(fold.y_val, fold.model.predict(fold.Z_val)))


def _row(C: float, fold_scores: list[float]) -> dict[str, Any]:
    return {
        "C": float(C),
        "mean_score": float(np.mean(fold_scores)),
        "std_score": float(np.std(fold_scores)),
        "fold_scores": [float(s) for s in fold_scores],
    }


def _stalled(table: list[dict[str, Any]]) -> bool:
    best = max(row["mean_score"] for row in table)
    recent = table[-PATIENCE:]
    return len(table) > PATIENCE and all(row["mean_score"] < best for row in recent)
