"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; fastai's
``lr_find``): about 100 steps with the rate growing exponentially from 1e-7 to 10, the smoothed loss recorded,
stopped once it diverges; the rate is read off the curve with fastai's ``valley`` rule (the point two thirds
down the longest descending stretch). The caller restores the weights afterwards."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from torch.optim import Optimizer

LR_FIND_STEPS = 100
LR_START, LR_END = 1e-7, 10.0
SMOOTHING = 0.98  # exponential moving average of the loss, debiased (fastai's)
DIVERGED = 4.0  # stop when the smoothed loss exceeds this multiple of the best one


def range_test(
    step: Callable[[Any, Any], float],
    optimizer: Optimizer,
    batches: Iterator[tuple[Any, Any]],
    *,
    steps: int = LR_FIND_STEPS,
    start: float = LR_START,
    end: float = LR_END,
    check_stop: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run ``step(x, y) -> loss`` at exponentially growing rates; every group's ``base_lr`` is its multiple
    of the rate (1 for the head). Returns ``{"lr": [...], "loss": [...]}`` (smoothed losses)."""
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    for i in range(steps):
        if check_stop is not None:
            check_stop()
        lr = start * (end / start) ** (i / max(1, steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("base_lr", 1.0)
        x, y = next(batches)
        loss = step(x, y)
        if not math.isfinite(loss):
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * loss
        smoothed = avg / (1 - SMOOTHING ** (i + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if i > 10 and smoothed > DIVERGED * best:
            break
    return {"lr": lrs, "loss": losses}


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``valley``: the longest stretch over which the loss keeps decreasing (a longest decreasing
    subsequence), and the rate two thirds of the way down it. Falls back to 1e-3 on an empty curve."""
    n = len(losses)
    if n < 3:
        return 1e-3
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[min(idx, n - 1)])
