"""One module interface over timm, torchvision and tlserve's own networks, after timm's feature API:
``forward_features`` → ``forward_head(pre_logits=True)`` gives the pooled pre-logits (the feature vector),
``reset_classifier(n)`` swaps the head, ``stages()`` lists the trunk input → output for partial unfreezing.

The wrapped network keeps its own parameter names under ``net.`` (so published checkpoints load into it);
a :class:`Layout` says, by attribute path, which of its parts play which role. Paths rather than module
references keep the wrapper safe to ``deepcopy`` and to ``torch.save``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Layout:
    """Where the parts of a wrapped network live, as dotted attribute paths inside it."""

    body: tuple[str, ...]  # run in order: image → pre-pool feature map
    pool: str  # global pooling; "" means global average pooling
    pre_logits: tuple[str, ...]  # after pool + flatten, before the classifier (VGG's fc6/fc7, ...)
    classifier: str  # the layer ``reset_classifier`` replaces
    stages: tuple[tuple[str, ...], ...]  # trunk groups, input → output; with the classifier: every parameter
    head: str = ""  # run on the feature MAP for logits when the head precedes pooling (SqueezeNet)


def resolve(root: nn.Module, path: str) -> nn.Module:
    """``resolve(net, "classifier.6")`` → ``net.classifier[6]`` (also reaches bound methods)."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class BackboneModel(nn.Module):
    """A backbone with timm's feature interface; ``forward`` gives logits."""

    def __init__(self, net: nn.Module, layout: Layout, num_features: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.layout = layout
        self.num_features = num_features
        self.drop_rate = drop_rate  # dropout before the classifier while training (fine-tuning may set it)

    @property
    def classifier(self) -> nn.Module:
        """The head; change it with ``reset_classifier``, never by assignment."""
        return resolve(self.net, self.layout.classifier)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for path in self.layout.body:
            x = resolve(self.net, path)(x)
        return x

    def pool_pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map → feature vector (``num_features``)."""
        x = resolve(self.net, self.layout.pool)(x) if self.layout.pool else F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        for path in self.layout.pre_logits:
            x = resolve(self.net, path)(x)
        return x

    def logits_from(self, fmap: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.layout.head:
            return torch.flatten(resolve(self.net, self.layout.head)(fmap), 1)
        if self.drop_rate > 0:
            features = F.dropout(features, self.drop_rate, self.training)
        return self.classifier(features)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        features = self.pool_pre_logits(x)
        return features if pre_logits else self.logits_from(x, features)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) from one pass: what the inference engines export."""
        fmap = self.forward_features(x)
        features = self.pool_pre_logits(fmap)
        return features, self.logits_from(fmap, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def stages(self) -> list[nn.Module]:
        """Trunk groups, input → output, each an ``nn.ModuleList`` view (no copies). The classifier is not
        among them: ``stages()`` plus ``classifier`` hold every parameter."""
        return [nn.ModuleList([resolve(self.net, p) for p in group]) for group in self.layout.stages]

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for ``num_classes`` (0: identity, the model then outputs features)."""
        old = self.classifier
        new: nn.Module
        if num_classes == 0:
            new = nn.Identity()
        elif isinstance(old, nn.Conv2d):  # SqueezeNet's 1×1 conv head
            new = nn.Conv2d(self.num_features, num_classes, kernel_size=1)
        else:
            new = nn.Linear(self.num_features, num_classes)
        parent_path, _, name = self.layout.classifier.rpartition(".")
        parent = resolve(self.net, parent_path) if parent_path else self.net
        new = new.to(next(self.parameters()).device)
        setattr(parent, name, new)

    @property
    def num_classes(self) -> int:
        head = self.classifier
        if isinstance(head, nn.Linear):
            return head.out_features
        if isinstance(head, nn.Conv2d):
            return head.out_channels
        return 0
