from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workers.backbones import get_backbone, load_model
from workers.training.new_head import apply_max_norm, new_head


@pytest.mark.parametrize("init", ["he", "xavier"])
def test_new_head_replaces_the_classifier_and_keeps_the_feature_interface(init: str) -> None:
    torch.manual_seed(0)
    spec = get_backbone("mobilenet_v3_small")
    model = load_model(spec, pretrained=False).eval()
    head = new_head(model, 7, dropout=0.3, init=init)
    assert head is model.classifier and isinstance(head, nn.Linear)
    assert (head.in_features, head.out_features) == (spec.feature_dim, 7)
    assert model.drop_rate == 0.3 and torch.count_nonzero(head.bias) == 0
    fan_in, fan_out = spec.feature_dim, 7
    expected_std = math.sqrt(2 / fan_in) if init == "he" else math.sqrt(2 / (fan_in + fan_out))
    assert head.weight.std().item() == pytest.approx(expected_std, rel=0.1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, spec.feature_dim)


def test_max_norm_caps_each_unit_and_leaves_small_ones() -> None:
    layer = nn.Linear(16, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4, 16))
        layer.weight[0] *= 0.01
    small = layer.weight[0].clone()
    apply_max_norm(layer, 0.5)
    norms = layer.weight.norm(dim=1)
    assert torch.all(norms <= 0.5 + 1e-6)
    torch.testing.assert_close(layer.weight[0], small)
    apply_max_norm(layer, None)  # disabled: untouched
    torch.testing.assert_close(layer.weight.norm(dim=1), norms)
