"""Build a registered backbone and load its weights: the one way a model comes into being in tlserve."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import WeightsError
from workers.backbones.weights import read_state_dict, weights_info

if TYPE_CHECKING:
    from workers.backbones.network import BackboneModel
    from workers.backbones.spec import BackboneSpec

RANDOM_SEED = 0  # random initialisation is seeded, so digest "random" names one definite set of weights


def build_random(spec: BackboneSpec) -> BackboneModel:
    """The architecture with seeded random weights; the global RNG is left as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return spec.builder()  # type: ignore[return-value]


def load_model(spec: BackboneSpec, *, pretrained: bool | None = None) -> BackboneModel:
    """The wrapped network in eval mode. ``pretrained=None`` loads the weights when available; ``True``
    requires them; ``False`` gives random weights. Never touches the network; bad files → ``WeightsError``."""
    info = weights_info(spec, pretrained=pretrained)
    model = build_random(spec)
    if info.pretrained:
        state = read_state_dict(spec, info)
        if spec.convert_weights is not None:
            state = spec.convert_weights(state, model.net)
        try:
            model.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{spec.name}: {info.path} does not fit the architecture: {exc}") from exc
    return model.eval()
