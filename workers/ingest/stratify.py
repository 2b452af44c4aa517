"""Stratified train/val/test assignment that is reproducible and stable across dataset versions.

Stable means an image never changes split: a test image that moved into train in the next version would
leak into training and inflate every test metric measured on that version.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal, TypeVar, get_args

from core.errors import InvalidInput

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = get_args(Split)
K = TypeVar("K", str, int)  # content hashes or ids: sorted before shuffling, so order of arrival is moot


def stratified_split(
    items: Sequence[tuple[K, str]],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    existing: Mapping[K, Split] | None = None,
) -> dict[K, Split]:
    """The split of every ``(key, label)`` item, class by class.

    Per class of n images the targets are round(n·test) test and round(n·val) val images (halves round
    up), but at least one image stays in train (val gives way first), so a class of one is train only.
    Keys in ``existing`` keep their split; new keys fill what the class still lacks of each target, so a
    class's proportions approach the targets as it grows. The same items, fractions and seed always give
    the same answer, whatever their order; each class is shuffled with its own seed, so adding a class
    does not reshuffle the others."""
    _check_fractions(val_fraction, test_fraction)
    existing = existing or {}
    if bad := {s for s in existing.values() if s not in SPLITS}:
        raise ValueError(f"unknown split names in existing assignments: {sorted(bad)}")
    by_class: dict[str, list[K]] = defaultdict(list)
    for key, label in items:
        by_class[label].append(key)
    if sum(map(len, by_class.values())) != len({key for key, _ in items}):
        raise ValueError("items contain the same key more than once")
    result: dict[K, Split] = {}
    for label, keys in by_class.items():
        kept = {key: existing[key] for key in keys if key in existing}
        new = sorted(key for key in keys if key not in existing)
        random.Random(f"{seed}:{label}").shuffle(new)
        n_val, n_test = _targets(len(keys), val_fraction, test_fraction)
        result |= kept | _fill(new, Counter(kept.values()), n_val, n_test)
    return result


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:  # also refuses NaN
            raise InvalidInput(f"{name} must be at least 0 and below 1; got {value}")
    if not val_fraction + test_fraction < 1:
        raise InvalidInput(
            f"val_fraction + test_fraction must be below 1 so that images are left for training; "
            f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction:g}"
        )


def _targets(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) image counts for a class of ``n``, leaving at least one for train."""
    n_val, n_test = _share(n, val_fraction), _share(n, test_fraction)
    excess = n_val + n_test - max(n - 1, 0)
    if excess > 0:
        cut = min(excess, n_val)
        n_val, n_test = n_val - cut, n_test - (excess - cut)
    return n_val, n_test


def _fill(new: list[K], have: Counter[Split], n_val: int, n_test: int) -> dict[K, Split]:
    """Assign shuffled ``new`` keys: test's shortfall first, then val's, the rest to train; never leave
    the class without a train image."""
    room = max(0, len(new) - (0 if have["train"] else 1))
    to_test = min(max(0, n_test - have["test"]), room)
    to_val = min(max(0, n_val - have["val"]), room - to_test)
    splits: list[Split] = ["test"] * to_test + ["val"] * to_val
    splits += ["train"] * (len(new) - len(splits))
    return dict(zip(new, splits, strict=True))


def _share(n: int, fraction: float) -> int:
    """n·fraction rounded half up, computed on the decimal the person wrote: round() sends 2.5 to 2, and
    in binary floating point 50 × 0.29 is 14.499999999999998."""
    return int((Decimal(str(fraction)) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP))
