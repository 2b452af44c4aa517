"""Optimizers by name and the per-epoch learning-rate schedule.

The schedule is a factor applied to each parameter group's ``base_lr`` at the start of every epoch rather
than a ``torch.optim.lr_scheduler``: gradual unfreezing adds groups mid-run, which torch's schedulers (their
``base_lrs`` are fixed at construction) would silently leave unscheduled, and a pure function of the epoch
needs no state to resume."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from workers.training.config import FinetuneConfig


def build_optimizer(cfg: FinetuneConfig, groups: Iterable[dict[str, Any]]) -> Optimizer:
    """One of the eight named optimizers, with ``cfg.weight_decay`` as L2 (decoupled for AdamW).
    Adagrad, Adadelta and RMSprop take ``cfg.lr`` as given (Adadelta's customary lr is 1.0)."""
    groups = list(groups)
    lr, wd, mom = cfg.lr, cfg.weight_decay, cfg.momentum
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


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate during ``epoch`` (0-based): cosine annealing towards 0, a
    ÷10 step after each third of the run, or constant."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))
    if schedule == "step":
        return 0.1 ** (epoch // max(1, math.ceil(epochs / 3)))
    if schedule == "none":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}")


def set_epoch_lr(optimizer: Optimizer, factor: float) -> float:
    """Scale every group from its ``base_lr``; returns the head's (first group's) learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return float(optimizer.param_groups[0]["lr"])
