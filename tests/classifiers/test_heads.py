from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers.heads import (
    HEAD_TYPES,
    HeadConfig,
    SoftmaxRidgeClassifier,
    build_pipeline,
    regularization_params,
)

# The one check scikit-learn itself expects RidgeClassifier to fail (its direct solvers do not
# iterate, so n_iter_ is None); inherited unchanged.
_RIDGE_XFAIL = {"check_non_transformer_estimators_n_iter": "inherited from RidgeClassifier: n_iter_ is None"}


@parametrize_with_checks([SoftmaxRidgeClassifier()], expected_failed_checks=lambda est: _RIDGE_XFAIL)
def test_softmax_ridge_follows_the_estimator_contract(estimator, check):
    check(estimator)


def test_default_is_a_standardised_multinomial_logistic_regression():
    pipeline = build_pipeline(HeadConfig(C=0.5))
    assert [name for name, _ in pipeline.steps] == ["scale", "clf"]
    assert isinstance(pipeline["scale"], StandardScaler)
    clf = pipeline["clf"]
    assert isinstance(clf, LogisticRegression) and clf.solver == "lbfgs" and clf.C == 0.5


def test_pca_whitening_and_no_scaling():
    pipeline = build_pipeline(HeadConfig(standardize=False, pca_whiten=True, pca_components=0.9))
    assert [name for name, _ in pipeline.steps] == ["pca", "clf"]
    assert isinstance(pipeline["pca"], PCA) and pipeline["pca"].whiten and pipeline["pca"].n_components == 0.9


def test_svm_is_a_sigmoid_calibrated_linear_svc():
    clf = build_pipeline(HeadConfig(type="linear_svm", C=2.0, class_weight="balanced"))["clf"]
    assert isinstance(clf, CalibratedClassifierCV) and clf.method == "sigmoid" and clf.ensemble is False
    assert isinstance(clf.estimator, LinearSVC) and clf.estimator.C == 2.0
    assert clf.estimator.class_weight == "balanced"


def test_c_maps_to_alpha_for_ridge_and_sgd():
    # ridge: sum(loss) + alpha |w|^2 == (C sum(loss) + |w|^2 / 2) / C  =>  alpha = 1 / (2 C)
    assert regularization_params("ridge", 0.25) == {"clf__alpha": 2.0}
    # sgd: mean(loss) + alpha |w|^2 / 2 == (C sum(loss) + |w|^2 / 2) / (C n)  =>  alpha = 1 / (C n)
    assert regularization_params("sgd", 0.5, n_samples=1000) == {"clf__alpha": pytest.approx(0.002)}
    pipeline = build_pipeline(HeadConfig(type="sgd", C=0.5), n_samples=1000)
    assert isinstance(pipeline["clf"], SGDClassifier) and pipeline["clf"].loss == "log_loss"
    assert pipeline["clf"].alpha == pytest.approx(0.002)
    with pytest.raises(ValueError, match="n_samples"):
        build_pipeline(HeadConfig(type="sgd", C=0.5))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": "knn"},
        {"C": 0.0},
        {"C": float("nan")},
        {"class_weight": "auto"},
        {"pca_components": 10},
        {"cv_folds": 1},
        {"C_grid": ()},
        {"search": "bayes"},
        {"tol": 0.0},
    ],
)
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ValueError):
        HeadConfig(**kwargs)


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_every_head_gives_probabilities(head_type, digits_split):
    X_tr, X_te, y_tr, _ = digits_split
    n = len(y_tr)
    proba = build_pipeline(HeadConfig(type=head_type, C=0.1), n_samples=n).fit(X_tr, y_tr).predict_proba(X_te)
    assert proba.shape == (len(X_te), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
