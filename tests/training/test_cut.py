from __future__ import annotations

import pytest
import torch

from workers.backbones import get_backbone, load_model
from workers.training.cut import Split


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("lenet5", 32),
        ("resnet18", 64),
        ("mobilenet_v3_small", 64),
        ("squeezenet1_1", 64),
        ("googlenet", 64),
        ("efficientnet_lite0", 64),
    ],
)
def test_tail_of_prefix_is_the_whole_model_at_every_cut(name: str, size: int) -> None:
    """The cached path trains ``tail`` on stored ``prefix`` outputs; that is only right if they compose
    to exactly the model, for every stage the schedule can cut at (and at the head)."""
    spec = get_backbone(name)
    model = load_model(spec, pretrained=False).eval()
    x = torch.randn(2, 1 if spec.preprocessing.grayscale else 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        for cut in range(len(model.stages()) + 1):
            split = Split(model, cut)
            torch.testing.assert_close(split.tail(split.prefix(x)), expected, rtol=1e-4, atol=1e-5)


def test_head_cut_gives_the_pooled_features() -> None:
    model = load_model(get_backbone("resnet18"), pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cached = Split(model, len(model.stages())).prefix(x)
        torch.testing.assert_close(cached, model.forward_head(model.forward_features(x), pre_logits=True))


def test_cut_is_the_input_of_the_first_trainable_stage() -> None:
    model = load_model(get_backbone("resnet18"), pretrained=False).eval()
    seen = {}
    model.net.layer4.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
        torch.testing.assert_close(Split(model, 4).prefix(x), seen["x"])
