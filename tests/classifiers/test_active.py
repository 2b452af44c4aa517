"""The ranking math of "which images to label next", on synthetic data whose right answer is known, and
one check on real digits that uncertainty sampling finds the images a probe gets wrong."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers.active import entropy, k_center_greedy, margin, normalise, rank


def test_margin_is_top1_minus_top2_whatever_the_column_order() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.34, 0.33, 0.33], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(margin(probs), [0.5, 0.01, 1.0])


def test_entropy_is_zero_when_sure_and_log_k_when_uniform() -> None:
    probs = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(entropy(probs), [0.0, np.log(4), np.log(2)])


def test_rank_puts_the_least_certain_first_and_keeps_pool_order_on_ties() -> None:
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.5, 0.5], [0.99, 0.01]])
    order, values = rank("margin", 3, probs=probs)
    assert order.tolist() == [1, 3, 2]
    np.testing.assert_allclose(values, [0.0, 0.0, 0.2])
    order, values = rank("entropy", 2, probs=probs)
    assert order.tolist() == [1, 3] and values[0] == pytest.approx(np.log(2))
    assert rank("margin", 10, probs=probs)[0].tolist() == [1, 3, 2, 0, 4]  # k past the pool: all of it


def test_k_center_greedy_picks_far_clusters_before_near_duplicates() -> None:
    """Labelled points sit at the origin; the pool has a tight clump near them and three far points:
    the far ones come first, each the farthest from all centres so far."""
    labelled = np.zeros((1, 2))
    pool = np.array([[0.1, 0.0], [0.0, 0.1], [10.0, 0.0], [10.0, 0.1], [0.0, 10.0], [-7.0, -7.0]])
    picked, values = k_center_greedy(pool, labelled, 4)
    assert picked[:3].tolist() in ([2, 4, 5], [3, 4, 5])
    assert set(picked[:3].tolist()) & {0, 1} == set()
    assert values[0] == pytest.approx(np.hypot(10.0, 0.1))  # [10, 0.1] is a hair farther than [10, 0]
    assert np.all(np.diff(values) <= 1e-9)  # each pick is no farther than the one before


def test_k_center_greedy_is_the_exact_greedy_on_random_points() -> None:
    """Against a plain O(k·n·m) reference implementation."""
    rng = np.random.default_rng(0)
    pool, labelled = rng.normal(size=(300, 8)), rng.normal(size=(20, 8))
    picked, values = k_center_greedy(pool, labelled, 15)
    centres, expected = list(labelled), []
    for _ in range(15):
        d = np.array([min(np.linalg.norm(p - c) for c in centres) for p in pool])
        d[expected] = -1
        expected.append(int(np.argmax(d)))
        centres.append(pool[expected[-1]])
    assert picked.tolist() == expected
    assert len(set(picked.tolist())) == 15 and values[0] == pytest.approx(values.max())


def test_coreset_with_nothing_labelled_and_a_pool_smaller_than_k() -> None:
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01]])
    order, values = rank("coreset", 5, pool_features=pool)
    assert sorted(order.tolist()) == [0, 1, 2] and len(values) == 3
    np.testing.assert_allclose(np.linalg.norm(normalise(pool), axis=1), 1.0)


def test_unknown_strategy_or_missing_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        rank("random", 1, probs=np.ones((2, 2)) / 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probabilities"):
        rank("margin", 1)
    with pytest.raises(ValueError, match="features"):
        rank("coreset", 1)


def test_uncertainty_sampling_finds_the_probe_s_mistakes_on_real_digits(digits) -> None:
    """A probe fitted on 60 real digits: its least-confident pool images are wrong far more often than
    its pool images on average (the premise of uncertainty sampling)."""
    from sklearn.linear_model import LogisticRegression

    X, y = digits
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    train, pool = idx[:60], idx[60:]
    clf = LogisticRegression(max_iter=2000).fit(X[train] / 16, y[train])
    probs = clf.predict_proba(X[pool] / 16)
    wrong = clf.classes_[probs.argmax(axis=1)] != y[pool]
    for strategy in ("margin", "entropy"):
        order, _ = rank(strategy, 100, probs=probs)
        assert wrong[order].mean() > 2 * wrong.mean(), strategy


@pytest.mark.parametrize("strategy", ["margin", "entropy", "coreset"])
def test_an_empty_pool_ranks_nothing(strategy: str) -> None:
    order, values = rank(
        strategy, 5, probs=np.zeros((0, 3)), pool_features=np.zeros((0, 4)), labelled_features=np.ones((2, 4))
    )
    assert order.tolist() == [] and values.tolist() == []
