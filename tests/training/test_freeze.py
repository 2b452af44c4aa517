from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.backbones import get_backbone, load_model
from workers.training.config import FinetuneConfig, Unfreeze
from workers.training.freeze import FreezeSchedule
from workers.training.optim import build_optimizer


def _trainable_stages(model: nn.Module) -> list[bool]:
    return [all(p.requires_grad for p in s.parameters()) for s in model.stages()]


@pytest.mark.parametrize(
    ("policy", "epoch", "expected"),
    [
        ("head", 0, [False] * 5),
        ("last:1", 0, [False, False, False, False, True]),
        ("last:3", 7, [False, False, True, True, True]),
        ("all", 0, [True] * 5),
        ("gradual", 0, [False] * 5),
        ("gradual", 1, [False, False, False, False, True]),
        ("gradual", 3, [False, False, True, True, True]),
        ("gradual", 9, [True] * 5),
    ],
)
def test_which_stages_train(policy: str, epoch: int, expected: list[bool]) -> None:
    model = load_model(get_backbone("resnet18"), pretrained=False)
    schedule = FreezeSchedule(model.stages(), Unfreeze.parse(policy))
    schedule.freeze_before_training()
    for e in range(epoch + 1):
        schedule.unfreeze_for(e)
    assert _trainable_stages(model) == expected
    assert all(p.requires_grad for p in model.classifier.parameters())  # the head always trains
    assert schedule.first_trainable(epoch) == (expected.index(True) if any(expected) else 5)


def test_gradual_every_k_epochs() -> None:
    model = load_model(get_backbone("lenet5"))
    schedule = FreezeSchedule(model.stages(), Unfreeze("gradual"), every=2)
    assert [schedule.num_trainable(e) for e in range(12)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4, 4]


def test_frozen_batchnorm_stays_in_eval_mode_after_train() -> None:
    model = load_model(get_backbone("resnet18"), pretrained=False)
    schedule = FreezeSchedule(model.stages(), Unfreeze("last", 1))
    schedule.freeze_before_training()
    schedule.unfreeze_for(0)
    schedule.set_train_mode(model)
    stages = model.stages()
    frozen_bn = [m for s in stages[:-1] for m in s.modules() if isinstance(m, nn.BatchNorm2d)]
    live_bn = [m for m in stages[-1].modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bn and live_bn
    assert not any(m.training for m in frozen_bn)
    assert all(m.training for m in live_bn)
    assert not any(p.requires_grad for m in frozen_bn for p in m.parameters())
    before = [m.running_mean.clone() for m in frozen_bn]
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, frozen_bn, strict=True))


def test_unfreezing_mid_training_adds_groups_with_discriminative_lr() -> None:
    model = load_model(get_backbone("resnet18"), pretrained=False)
    schedule = FreezeSchedule(model.stages(), Unfreeze("gradual"), lr_decay=0.5)
    schedule.freeze_before_training()
    head = {"params": list(model.classifier.parameters()), "lr": 0.1, "base_lr": 0.1}
    optimizer = build_optimizer(FinetuneConfig(lr=0.1), [head])
    assert schedule.unfreeze_for(0, optimizer, 0.1) == []
    assert schedule.unfreeze_for(1, optimizer, 0.1) == [4]
    assert schedule.unfreeze_for(1, optimizer, 0.1) == []  # idempotent
    assert schedule.unfreeze_for(3, optimizer, 0.1) == [3, 2]
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert [g["name"] for g in optimizer.param_groups[1:]] == ["stage4", "stage3", "stage2"]
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
