from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.training.config import OPTIMIZERS, FinetuneConfig
from workers.training.optim import build_optimizer, lr_factor, set_epoch_lr


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_steps_and_takes_new_groups(name: str) -> None:
    torch.manual_seed(0)
    head, stage = nn.Linear(4, 3), nn.Linear(4, 4)
    cfg = FinetuneConfig(optimizer=name, lr=0.1)
    opt = build_optimizer(cfg, [{"params": list(head.parameters()), "lr": 0.1, "base_lr": 0.1}])
    opt.add_param_group({"params": list(stage.parameters()), "lr": 0.01, "base_lr": 0.01})
    before = head.weight.clone(), stage.weight.clone()
    x = torch.randn(8, 4)
    nn.functional.cross_entropy(head(stage(x)), torch.arange(8) % 3).backward()
    opt.step()
    assert not torch.equal(before[0], head.weight) and not torch.equal(before[1], stage.weight)
    expected = {"sgd": (torch.optim.SGD, 0), "momentum": (torch.optim.SGD, 0.9), "nesterov": (torch.optim.SGD, 0.9)}
    if name in expected:
        cls, momentum = expected[name]
        assert isinstance(opt, cls) and opt.defaults["momentum"] == momentum
        assert opt.defaults["nesterov"] == (name == "nesterov")


def test_lr_schedules() -> None:
    assert [lr_factor("none", e, 4) for e in range(4)] == [1, 1, 1, 1]
    assert [round(lr_factor("cosine", e, 4), 4) for e in range(4)] == [1.0, 0.8536, 0.5, 0.1464]
    assert [lr_factor("step", e, 6) for e in range(6)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_schedule_scales_every_group_from_its_base() -> None:
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(FinetuneConfig(lr=1.0), [{"params": [params[0]], "lr": 1.0, "base_lr": 1.0}])
    opt.add_param_group({"params": [params[1]], "lr": 0.1, "base_lr": 0.1})
    assert set_epoch_lr(opt, 0.5) == 0.5
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])
