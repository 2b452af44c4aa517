"""The new classification head of a fine-tuned model: the backbone's own ``reset_classifier`` (so the
wrapper's ``forward_head(pre_logits=True)`` still gives the pooled features), He or Xavier initialisation,
dropout before it through the wrapper's ``drop_rate``, and a max-norm constraint applied after each step."""

from __future__ import annotations

import torch
from torch import nn

from workers.backbones.network import BackboneModel


def new_head(model: BackboneModel, num_classes: int, *, dropout: float, init: str) -> nn.Module:
    """Replace the classifier with a fresh ``num_classes`` one, initialised; returns it."""
    model.reset_classifier(num_classes)
    head = model.classifier
    init_head(head, init)
    model.drop_rate = dropout
    return head


def init_head(layer: nn.Module, init: str) -> None:
    """He (fan-in, for ReLU-family inputs) or Xavier (Glorot uniform) weights, zero bias."""
    weight = getattr(layer, "weight", None)
    if weight is None:
        raise TypeError(f"cannot initialise a {type(layer).__name__}: it has no weight")
    if init == "he":
        nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")
    elif init == "xavier":
        nn.init.xavier_uniform_(weight)
    else:
        raise ValueError(f"unknown init {init!r}: 'he' or 'xavier'")
    bias = getattr(layer, "bias", None)
    if bias is not None:
        nn.init.zeros_(bias)


@torch.no_grad()
def apply_max_norm(layer: nn.Module, max_norm: float | None) -> None:
    """Rescale each output unit's incoming weight vector to L2 norm ≤ ``max_norm`` (Srivastava et al.)."""
    if max_norm is None:
        return
    weight = layer.weight  # type: ignore[union-attr]
    weight.copy_(torch.renorm(weight, p=2, dim=0, maxnorm=max_norm))
