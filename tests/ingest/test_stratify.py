"""``stratified_split``: reproducible, per-class proportions, tiny classes, and stability across versions."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from core.errors import InvalidInput
from tests.ingest.factories import digit_label
from workers.ingest import stratified_split

# Real labels: the first 300 of scikit-learn's handwritten digits, keyed like content hashes.
DIGITS = [(f"sha-{i:04d}", digit_label(i)) for i in range(300)]


def counts(assignment: dict, items: list, label: str) -> Counter:
    return Counter(assignment[key] for key, item_label in items if item_label == label)


def test_same_seed_same_split_whatever_the_order() -> None:
    first = stratified_split(DIGITS, 0.1, 0.2, seed=7)
    shuffled = DIGITS[:]
    random.Random(1).shuffle(shuffled)
    assert stratified_split(shuffled, 0.1, 0.2, seed=7) == first
    assert stratified_split(DIGITS, 0.1, 0.2, seed=8) != first


def test_each_class_gets_its_rounded_share() -> None:
    assignment = stratified_split(DIGITS, 0.1, 0.2, seed=0)
    assert set(assignment) == {key for key, _ in DIGITS}
    for label, n in Counter(label for _, label in DIGITS).items():
        expected_val, expected_test = int(n * 0.1 + 0.5), int(n * 0.2 + 0.5)
        assert counts(assignment, DIGITS, label) == Counter(
            train=n - expected_val - expected_test, val=expected_val, test=expected_test
        )


def test_halves_round_up() -> None:
    items = [(i, "a") for i in range(5)]  # 5 × 0.1 = 0.5 -> 1; 5 × 0.3 = 1.5 -> 2
    assert Counter(stratified_split(items, 0.1, 0.3, seed=0).values()) == Counter(train=2, val=1, test=2)


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [
        (1, 0.2, 0.2, {"train": 1}),
        (2, 0.25, 0.5, {"train": 1, "test": 1}),  # val gives way first
        (2, 0.5, 0.45, {"train": 1, "test": 1}),
        (3, 0.34, 0.34, {"train": 1, "val": 1, "test": 1}),
        (4, 0.0, 0.0, {"train": 4}),
    ],
)
def test_tiny_classes_keep_a_train_image(n: int, val: float, test: float, expected: dict) -> None:
    items = [(f"k{i}", "rare") for i in range(n)]
    assert Counter(stratified_split(items, val, test, seed=3).values()) == Counter(expected)


def test_existing_assignments_never_move_and_new_items_fill_the_targets() -> None:
    first, second = DIGITS[:200], DIGITS
    v1 = stratified_split(first, 0.1, 0.2, seed=5)
    v2 = stratified_split(second, 0.1, 0.2, seed=5, existing=v1)
    assert all(v2[key] == split for key, split in v1.items())
    for label, n in Counter(label for _, label in second).items():  # as if split in one go
        expected_val, expected_test = int(n * 0.1 + 0.5), int(n * 0.2 + 0.5)
        assert counts(v2, second, label) == Counter(
            train=n - expected_val - expected_test, val=expected_val, test=expected_test
        )


def test_new_items_go_to_train_when_test_is_already_over_its_share() -> None:
    existing = {"a": "test", "b": "test", "c": "test"}
    items = [(key, "x") for key in "abcd"]
    assert stratified_split(items, 0.1, 0.2, seed=0, existing=existing)["d"] == "train"


def test_existing_keys_not_in_this_version_are_dropped() -> None:
    assert stratified_split([("a", "x")], 0.1, 0.2, seed=0, existing={"gone": "test"}) == {"a": "train"}


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.2), (0.1, 1.0), (0.5, 0.5), (0.7, 0.4), (float("nan"), 0.1)])
def test_bad_fractions_are_refused(val: float, test: float) -> None:
    with pytest.raises(InvalidInput):
        stratified_split(DIGITS, val, test, seed=0)


def test_duplicate_keys_and_unknown_split_names_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="same key"):
        stratified_split([("a", "x"), ("a", "y")], 0.1, 0.2, seed=0)
    with pytest.raises(ValueError, match="unknown split"):
        stratified_split([("a", "x")], 0.1, 0.2, seed=0, existing={"a": "holdout"})  # type: ignore[dict-item]
