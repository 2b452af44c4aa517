"""Real data for the head tests: scikit-learn's handwritten digits (1,797 real 8x8 images)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Raw pixel features (float32, 64 columns) and string labels "0".."9"."""
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y.astype(str)


@pytest.fixture(scope="session")
def digits_split(digits: tuple[np.ndarray, np.ndarray]) -> Split:
    """A stratified 75/25 train/test split of the digits."""
    X, y = digits
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    return X_tr, X_te, y_tr, y_te


@pytest.fixture(scope="session")
def digits_binary(digits: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Threes against eights: a two-class problem that is not trivially separable."""
    X, y = digits
    keep = np.isin(y, ["3", "8"])
    return X[keep], y[keep]
