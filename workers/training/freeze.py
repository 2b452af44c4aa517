"""The freeze/unfreeze schedule as its own object (after Lightning's ``BaseFinetuning``): which trunk stages
train at each epoch, keeping frozen stages frozen (``requires_grad`` off, BatchNorm and dropout in eval mode)
and giving each stage that starts to train its own optimizer parameter group with a discriminative learning
rate (``lr * decay**depth``; the head is depth 0, the top stage depth 1, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer

from workers.training.config import Unfreeze


class FreezeSchedule:
    """Stages are ordered input → output, as ``BackboneModel.stages()`` gives them."""

    def __init__(self, stages: Sequence[nn.Module], policy: Unfreeze, *, every: int = 1, lr_decay: float = 0.1):
        if policy.kind == "last" and policy.n > len(stages):
            raise ValueError(f"last:{policy.n} but the model has {len(stages)} stages")
        self.stages = list(stages)
        self.policy = policy
        self.every = max(1, every)
        self.lr_decay = lr_decay
        self._unfrozen: set[int] = set()

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def num_trainable(self, epoch: int) -> int:
        """How many of the top stages train during ``epoch`` (0-based)."""
        kind = self.policy.kind
        if kind == "head":
            return 0
        if kind == "last":
            return self.policy.n
        if kind == "all":
            return self.num_stages
        return min(self.num_stages, epoch // self.every)  # gradual: head alone first, then one more per step

    def trainable(self, epoch: int) -> list[int]:
        """Indices of the stages that train during ``epoch``, top stage first (the order groups are added)."""
        return list(range(self.num_stages - 1, self.num_stages - 1 - self.num_trainable(epoch), -1))

    def first_trainable(self, epoch: int) -> int:
        """Index of the lowest trainable stage; ``num_stages`` when only the head trains (the cut point)."""
        return self.num_stages - self.num_trainable(epoch)

    def depth(self, index: int) -> int:
        return self.num_stages - index

    def freeze_before_training(self) -> None:
        """Everything in the trunk frozen; the head is left as it is (trainable)."""
        for stage in self.stages:
            stage.requires_grad_(False)
        self._unfrozen.clear()

    def unfreeze_for(self, epoch: int, optimizer: Optimizer | None = None, base_lr: float = 0.0) -> list[int]:
        """Unfreeze the stages due by ``epoch``; with an optimizer, add one parameter group per new stage.
        Returns the newly unfrozen indices (top first), so calling it every epoch is idempotent."""
        new = [i for i in self.trainable(epoch) if i not in self._unfrozen]
        for i in new:
            self.stages[i].requires_grad_(True)
            self._unfrozen.add(i)
            if optimizer is not None:
                optimizer.add_param_group(self.param_group(i, base_lr))
        return new

    def param_group(self, index: int, base_lr: float) -> dict[str, Any]:
        """A parameter group for one stage; ``base_lr`` is kept so the LR schedule can scale every group."""
        lr = base_lr * self.lr_decay ** self.depth(index)
        return {"params": list(self.stages[index].parameters()), "lr": lr, "base_lr": lr, "name": f"stage{index}"}

    def set_train_mode(self, model: nn.Module, *, bn_eval: bool = False) -> None:
        """``model.train()`` but frozen stages stay in eval mode: their BatchNorm statistics must not drift
        (and the cached activations of the cached path were computed in eval mode). ``bn_eval``: every
        BatchNorm in eval mode, also in the stages that train (their affine parameters still learn): small
        batches of a small dataset would otherwise overwrite the pretrained statistics."""
        model.train()
        for i, stage in enumerate(self.stages):
            if i not in self._unfrozen:
                stage.eval()
        if bn_eval:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
