"""A backbone seen as a frozen prefix and a trainable tail, cut at the input of one stage.

The cached data path needs the activation at the cut (run the prefix once) and a way to run only the tail
on it; the augmented path runs the prefix without autograd every batch. Both come from the wrapper's
``Layout``: the forward path is ``body`` steps → global pool → ``pre_logits`` steps → classifier, and a
stage whose first layer sits inside a plain ``nn.Sequential`` step is reached by expanding that step into
its children (``features`` → ``features.0``, ``features.1``, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workers.backbones.network import BackboneModel, resolve

POOL = "<global pool>"


def _plain_sequential(module: object) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _expand_to(model: BackboneModel, steps: list[str], target: str) -> tuple[list[str], int]:
    """Steps (attribute paths, or POOL) with ``target`` as a step of its own, and its index."""
    for i, step in enumerate(steps):
        if step == target:
            return steps, i
        if step != POOL and target.startswith(step + "."):
            module = resolve(model.net, step)
            if not _plain_sequential(module):
                raise ValueError(f"cannot cut inside {step!r} ({type(module).__name__}) to reach {target!r}")
            children = [f"{step}.{name}" for name, _ in module.named_children()]
            return _expand_to(model, [*steps[:i], *children, *steps[i + 1 :]], target)
    raise ValueError(f"stage layer {target!r} is not on the forward path of {type(model.net).__name__}")


class Split:
    """``tail(prefix(x)) == model(x)``. ``cut`` is the index of the first trainable stage; ``num_stages``
    (only the head trains) cuts at the pooled features, or at the feature map for heads that act on it."""

    def __init__(self, model: BackboneModel, cut: int) -> None:
        layout = model.layout
        self.model = model
        steps = [*layout.body, POOL, *layout.pre_logits]
        if cut < len(layout.stages):
            steps, index = _expand_to(model, steps, layout.stages[cut][0])
        elif layout.head:  # SqueezeNet: logits come from the map, so the map is what gets cached
            index = steps.index(POOL)
        else:
            index = len(steps)
        self.steps = steps
        self.index = index
        self.cut = cut

    def _run(self, step: str, x: torch.Tensor) -> torch.Tensor:
        if step != POOL:
            return resolve(self.model.net, step)(x)
        pool = self.model.layout.pool
        x = resolve(self.model.net, pool)(x) if pool else F.adaptive_avg_pool2d(x, 1)
        return torch.flatten(x, 1)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Input image batch → activation at the cut."""
        for step in self.steps[: self.index]:
            x = self._run(step, x)
        return x

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        """Activation at the cut → logits (the wrapper's own ``logits_from`` applies dropout + classifier)."""
        fmap = None  # only heads that act on the map need it, and for them the pool is always in the tail
        for step in self.steps[self.index :]:
            if step == POOL:
                fmap = x
            x = self._run(step, x)
        return self.model.logits_from(fmap, x)  # type: ignore[arg-type]
