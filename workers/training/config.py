"""The fine-tuning hyperparameters: one frozen dataclass that mirrors the ``finetune`` request body of
DESIGN.md, validated once in ``from_dict`` so that the loop never sees a bad value."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from core.errors import InvalidInput

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw")
AUGMENTATIONS = ("hflip", "vflip", "rotate", "crop", "shear", "shift", "warp", "color", "pca_color")
SCHEDULES = ("cosine", "step", "none")
INITS = ("he", "xavier")
HEAD_INITS = ("probe", "random")
MONITORS = ("val_loss", "val_acc")
DEFAULT_LR = 1e-3  # the head's rate when it starts at random
# A head that starts as the probe is already at the optimum of the frozen features: a tenth of that rate
# lets the trained stages move without knocking it off (on 1,000 Fashion-MNIST images, last stage + flips
# for 3 epochs: 1e-4 kept a better model than the probe where 1e-3 ended 1.5 points below it).
PROBE_START_LR = 1e-4
# Without an explicit ``discriminative_lr_decay`` the bottom stage trains at lr / 100 and the stages between
# at geometrically spaced rates (fastai's ``slice(lr / 100, lr)``), whatever the number of stages.
DISCRIMINATIVE_SPAN = 0.01
DATA_PATHS = ("auto", "cached", "augmented")
# The augmentations the cached path can hold — flips, each by the image axis (of C×H×W) it reverses: a finite
# set of variants, so the frozen part runs once per variant.
FLIP_AXES = {"hflip": -1, "vflip": -2}
CACHEABLE_AUGMENTATIONS = tuple(FLIP_AXES)


@dataclass(frozen=True)
class Unfreeze:
    """A parsed ``unfreeze`` policy: ``kind`` is "head", "last", "all" or "gradual"; ``n`` is N of "last:N"."""

    kind: str
    n: int = 0

    @classmethod
    def parse(cls, text: str) -> Unfreeze:
        text = str(text).strip().lower()
        if text in ("head", "all", "gradual"):
            return cls(text)
        kind, sep, num = text.partition(":")
        if kind == "last" and sep and num.isdigit() and int(num) >= 1:
            return cls("last", int(num))
        raise InvalidInput(
            f"unfreeze must be 'head', 'last:N' (N >= 1), 'all' or 'gradual'; got {text!r}",
            details={"field": "unfreeze"},
        )

    def __str__(self) -> str:
        return f"last:{self.n}" if self.kind == "last" else self.kind


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 10
    unfreeze: str = "head"  # "head" | "last:N" | "all" | "gradual"
    gradual_every: int = 1  # gradual: one more stage (from the top) every this many epochs
    optimizer: str = "adamw"
    lr: float | str | None = None  # the head's learning rate, "auto" (a range test picks it), None: by head_init
    momentum: float = 0.9  # sgd "momentum"/"nesterov" and rmsprop
    weight_decay: float = 1e-4
    dropout: float = 0.2
    batch_size: int = 32
    early_stopping_patience: int = 3  # epochs without a better validation loss; 0 disables it
    augment: tuple[str, ...] = field(default_factory=tuple)
    label_smoothing: float = 0.0
    max_norm: float | None = None  # max L2 norm of each row of the head's weight, applied after every step
    schedule: str = "cosine"  # per-step learning-rate schedule, after the warm-up
    warmup: float = 0.1  # fraction of all steps over which the rate rises linearly from 0 (0: no warm-up)
    head_init: str = "probe"  # "probe": a linear probe fitted on the train split's features (LP-FT); "random"
    refit_probe: bool = True  # when epoch 0 (the probe) stays the best, refit it on train + val as a probe would
    refit: bool = True  # when a trained epoch is the best, train again the same way on train + val for that many
    # epochs (from the probe of train + val), as a linear probe is refitted after its C search
    init: str = "xavier"  # init of a random head: "he" | "xavier"
    discriminative_lr_decay: float | None = None  # a stage d below the head trains at lr * decay**d; None:
    # decay = DISCRIMINATIVE_SPAN ** (1 / num_stages)
    bn_eval: bool | None = None  # BatchNorm of trained stages in eval mode; None: yes unless unfreeze is "all"
    monitor: str = "val_loss"  # the validation metric that picks the best epoch and drives early stopping
    seed: int = 0
    data_path: str = "auto"  # "auto" | "cached" | "augmented"

    def __post_init__(self) -> None:
        if isinstance(self.augment, list):  # a frozen, hashable value even when built from a list
            object.__setattr__(self, "augment", tuple(self.augment))

    @property
    def policy(self) -> Unfreeze:
        return Unfreeze.parse(self.unfreeze)

    @property
    def auto_lr(self) -> bool:
        return self.lr == "auto"

    def resolved_lr(self) -> float:
        """The head's rate when not "auto": as given, else PROBE_START_LR from the probe, DEFAULT_LR from random."""
        if self.lr is None:
            return PROBE_START_LR if self.head_init == "probe" else DEFAULT_LR
        return float(self.lr)

    def stage_lr_decay(self, num_stages: int) -> float:
        """The discriminative factor between neighbouring stages (and between the head and the top stage)."""
        if self.discriminative_lr_decay is not None:
            return self.discriminative_lr_decay
        return DISCRIMINATIVE_SPAN ** (1.0 / max(1, num_stages))

    def resolved_bn_eval(self) -> bool:
        """BatchNorm statistics frozen while the backbone is partially frozen (small data, distribution of the
        pretrained statistics kept); trained with it when every stage trains from the start."""
        return self.policy.kind != "all" if self.bn_eval is None else bool(self.bn_eval)

    def resolved_data_path(self) -> str:
        """ "cached" when the frozen part can be run once per image variant (a fixed cut; no augmentation but
        flips, whose few variants it caches), else "augmented"."""
        if self.data_path != "auto":
            return self.data_path
        fixed_cut = self.policy.kind in ("head", "last")
        return "cached" if fixed_cut and set(self.augment) <= set(CACHEABLE_AUGMENTATIONS) else "augmented"

    @classmethod
    def from_dict(cls, body: dict[str, Any] | None, *, num_stages: int | None = None) -> FinetuneConfig:
        """Build and validate from a request body; ``num_stages`` (the backbone's) bounds "last:N"."""
        body = dict(body or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise InvalidInput(f"unknown finetune field(s): {', '.join(unknown)}", details={"fields": unknown})
        if "augment" in body:
            body["augment"] = _augment_list(body["augment"])
        cfg = cls(**body)
        cfg.validate(num_stages=num_stages)
        return cfg

    def validate(self, *, num_stages: int | None = None) -> None:
        """Raise ``InvalidInput`` naming the field and the allowed values."""
        _check_int(self.epochs, "epochs", 1, 10_000)
        _check_int(self.gradual_every, "gradual_every", 1, 10_000)
        _check_int(self.batch_size, "batch_size", 1, 65_536)
        _check_int(self.early_stopping_patience, "early_stopping_patience", 0, 10_000)
        _check_int(self.seed, "seed", 0, 2**63 - 1)
        _check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        _check_choice(self.schedule, "schedule", SCHEDULES)
        _check_choice(self.init, "init", INITS)
        _check_choice(self.data_path, "data_path", DATA_PATHS)
        _check_choice(self.head_init, "head_init", HEAD_INITS)
        _check_choice(self.monitor, "monitor", MONITORS)
        if not self.auto_lr and self.lr is not None:
            _check_float(self.lr, "lr", 0.0, 10.0, low_open=True)
        _check_float(self.warmup, "warmup", 0.0, 1.0, high_open=True)
        for name in ("refit_probe", "refit"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInput(
                    f"{name} must be true or false; got {getattr(self, name)!r}", details={"field": name}
                )
        if self.bn_eval is not None and not isinstance(self.bn_eval, bool):
            raise InvalidInput(
                f"bn_eval must be true, false or null; got {self.bn_eval!r}", details={"field": "bn_eval"}
            )
        _check_float(self.momentum, "momentum", 0.0, 1.0, high_open=True)
        _check_float(self.weight_decay, "weight_decay", 0.0, 1.0)
        _check_float(self.dropout, "dropout", 0.0, 1.0, high_open=True)
        _check_float(self.label_smoothing, "label_smoothing", 0.0, 1.0, high_open=True)
        if self.discriminative_lr_decay is not None:
            _check_float(self.discriminative_lr_decay, "discriminative_lr_decay", 0.0, 1.0, low_open=True)
        if self.max_norm is not None:
            _check_float(self.max_norm, "max_norm", 0.0, 1e6, low_open=True)
        for name in self.augment:
            _check_choice(name, "augment", AUGMENTATIONS)
        policy = self.policy
        if policy.kind == "last" and num_stages is not None and policy.n > num_stages:
            raise InvalidInput(
                f"unfreeze 'last:{policy.n}' asks for more stages than the backbone has ({num_stages})",
                details={"field": "unfreeze", "num_stages": num_stages},
            )
        random_ops = [name for name in self.augment if name not in CACHEABLE_AUGMENTATIONS]
        if self.data_path == "cached" and (random_ops or policy.kind in ("all", "gradual")):
            raise InvalidInput(
                "data_path 'cached' runs the frozen part once per flip variant, so it allows no augmentation "
                f"but {list(CACHEABLE_AUGMENTATIONS)} and no unfreeze {str(policy)!r}; use 'augmented' or 'auto'",
                details={"field": "data_path"},
            )


def _augment_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise InvalidInput(f"augment must be a list of names from {list(AUGMENTATIONS)}", details={"field": "augment"})
    names = [str(v).strip().lower() for v in value]
    return tuple(dict.fromkeys(names))  # drop repeats, keep order


def _check_choice(value: Any, name: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidInput(f"unknown {name} {value!r}; choose from {list(allowed)}", details={"field": name})


def _check_int(value: Any, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer in [{low}, {high}]; got {value!r}", details={"field": name})


def _check_float(
    value: Any, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise InvalidInput(f"{name} must be a number in {bounds}; got {value!r}", details={"field": name})
