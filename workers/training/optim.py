"""Optimizers by name and the per-epoch learning-rate schedule.

The schedule is a factor applied to each parameter group's ``base_lr`` before every step rather than a
``torch.optim.lr_scheduler``: gradual unfreezing adds groups mid-run, which torch's schedulers (their
``base_lrs`` are fixed at construction) would silently leave unscheduled, and a pure function of the
(fractional) epoch needs no state to resume. The default is a linear warm-up over the first ``warmup`` of
the run, then cosine annealing (the shape of fastai's one-cycle without its momentum cycle)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from workers.training.config import FinetuneConfig


def build_optimizer(cfg: FinetuneConfig, groups: Iterable[dict[str, Any]], lr: float | None = None) -> Optimizer:
    """One of the eight named optimizers, with ``cfg.weight_decay`` as L2 (decoupled for AdamW).
    Adagrad, Adadelta and RMSprop take the rate as given (Adadelta's customary lr is 1.0). ``lr``: the
    resolved rate when ``cfg.lr`` is "auto" (every group carries its own anyway)."""
    groups = list(groups)
    lr = float(lr if lr is not None else cfg.resolved_lr())
    wd, mom = cfg.weight_decay, cfg.momentum
    name = cfg.optimizer
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=wd)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr=lr, momentum=mom, nesterov=name == "nesterov", weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr, weight_decay=wd)
    if name == "adadelta":
        return torch.optim.Adadelta(groups, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor(schedule: str, epoch: float, epochs: int, warmup: float = 0.0, step: float = 0.0) -> float:
    """Multiplier of the base learning rate for the step that starts at ``epoch`` (0-based, fractional
    within an epoch; ``step`` is one step's share of an epoch): a linear warm-up over the first ``warmup``
    fraction of the run (never a zero rate), then cosine annealing towards 0, a ÷10 step after each third
    of the run, or constant."""
    total = max(1, epochs)
    ramp = warmup * total
    if ramp > 0 and epoch < ramp:
        return min(1.0, (epoch + max(step, 1e-3 * ramp)) / ramp)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - ramp) / max(total - ramp, 1e-9)))
    if schedule == "step":
        return 0.1 ** (int(epoch) // max(1, math.ceil(epochs / 3)))
    if schedule == "none":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}")


def set_epoch_lr(optimizer: Optimizer, factor: float) -> float:
    """Scale every group from its ``base_lr``; returns the head's (first group's) learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return float(optimizer.param_groups[0]["lr"])
