from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tests.training.factories import digit_split
from workers.training import Samples


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on the shared 2-core build machines a 2-thread torch collapses 8-23x as soon as
    anything else runs (DESIGN.md), one thread holds; these models are far too small to need more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits_split() -> tuple[Samples, Samples]:
    """60 train and 25 val real digits per class."""
    return digit_split(60, 25)


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """Real RGB photos bundled with scikit-image."""
    skdata = pytest.importorskip("skimage.data")
    return [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
