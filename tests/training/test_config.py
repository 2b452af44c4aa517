from __future__ import annotations

import pytest

from core.errors import InvalidInput
from workers.training import FinetuneConfig, Unfreeze
from workers.training.config import AUGMENTATIONS, OPTIMIZERS


def test_defaults_mirror_the_design_body() -> None:
    cfg = FinetuneConfig.from_dict({})
    assert (cfg.epochs, cfg.unfreeze, cfg.optimizer, cfg.lr, cfg.batch_size) == (10, "head", "adamw", None, 32)
    assert cfg.resolved_lr() == 1e-4  # the head starts as the probe: small steps
    assert FinetuneConfig.from_dict({"head_init": "random"}).resolved_lr() == 1e-3
    assert FinetuneConfig.from_dict({"lr": 0.03}).resolved_lr() == 0.03
    assert (cfg.early_stopping_patience, cfg.augment, cfg.schedule, cfg.init) == (3, (), "cosine", "xavier")
    assert cfg.resolved_data_path() == "cached"


def test_from_dict_normalises_augment_and_accepts_every_name() -> None:
    cfg = FinetuneConfig.from_dict({"augment": ["HFlip", "rotate", "hflip", *AUGMENTATIONS]})
    assert cfg.augment == tuple(dict.fromkeys(["hflip", "rotate", *AUGMENTATIONS]))
    for name in OPTIMIZERS:
        assert FinetuneConfig.from_dict({"optimizer": name}).optimizer == name


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
        ({"unfreeze": "last:0"}, "unfreeze must be"),
        ({"unfreeze": "last:two"}, "unfreeze must be"),
        ({"unfreeze": "top"}, "unfreeze must be"),
        ({"augment": ["hflip", "mixup"]}, "unknown augment 'mixup'"),
        ({"augment": "hflip"}, "augment must be a list"),
        ({"epochs": 0}, "epochs must be an integer"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"lr": -1.0}, "lr must be a number"),
        ({"lr": float("nan")}, "lr must be a number"),
        ({"dropout": 1.0}, "dropout must be a number"),
        ({"max_norm": 0}, "max_norm must be a number"),
        ({"schedule": "linear"}, "unknown schedule"),
        ({"init": "orthogonal"}, "unknown init"),
        ({"learning_rate": 0.1}, "unknown finetune field(s): learning_rate"),
        ({"data_path": "cached", "augment": ["hflip", "crop"]}, "data_path 'cached'"),
        ({"data_path": "cached", "unfreeze": "gradual"}, "data_path 'cached'"),
    ],
)
def test_invalid_bodies_raise_invalid_input_naming_the_problem(body: dict, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        FinetuneConfig.from_dict(body)
    assert says in err.value.message
    assert err.value.status_code == 422


def test_last_n_is_bounded_by_the_number_of_stages() -> None:
    assert FinetuneConfig.from_dict({"unfreeze": "last:4"}, num_stages=4).policy == Unfreeze("last", 4)
    with pytest.raises(InvalidInput, match=r"last:5.*backbone has \(4\)"):
        FinetuneConfig.from_dict({"unfreeze": "last:5"}, num_stages=4)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"unfreeze": "head"}, "cached"),
        ({"unfreeze": "last:2"}, "cached"),
        ({"unfreeze": "all"}, "augmented"),
        ({"unfreeze": "gradual"}, "augmented"),
        ({"unfreeze": "head", "augment": ["hflip"]}, "cached"),  # one pass per flip variant
        ({"unfreeze": "last:1", "augment": ["hflip", "vflip"]}, "cached"),
        ({"unfreeze": "head", "augment": ["hflip", "rotate"]}, "augmented"),
        ({"unfreeze": "head", "data_path": "augmented"}, "augmented"),
    ],
)
def test_auto_data_path(body: dict, path: str) -> None:
    assert FinetuneConfig.from_dict(body).resolved_data_path() == path
