"""Builders: each makes one wrapped network (:class:`~workers.backbones.network.BackboneModel`) with random
weights and never touches the network. torch, timm and torchvision are imported inside the functions so
that importing the registry stays cheap: the API lists backbones without loading torch.

A dropout that sits right before a network's classifier is left out of the feature path and becomes the
wrapper's ``drop_rate`` instead, so that features are the same in train and eval mode wherever the
architecture allows it (AlexNet's dropouts sit between its FC layers and stay where they are).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from workers.backbones.network import Layout


def _wrap(net: nn.Module, layout: Layout, num_features: int, drop_rate: float = 0.0) -> nn.Module:
    from workers.backbones.network import BackboneModel

    return BackboneModel(net, layout, num_features, drop_rate)


def _split_at_pools(seq: nn.Module, prefix: str) -> tuple[tuple[str, ...], ...]:
    """Group a plain conv stack into stages that end at each max-pool (VGG blocks, AlexNet, SqueezeNet)."""
    from torch import nn

    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    for name, layer in seq.named_children():
        current.append(f"{prefix}.{name}")
        if isinstance(layer, nn.MaxPool2d):
            groups.append(tuple(current))
            current = []
    if current:
        groups.append(tuple(current))
    return tuple(groups)


def _indexed(prefix: str, count: int) -> tuple[tuple[str, ...], ...]:
    return tuple((f"{prefix}.{i}",) for i in range(count))


def tf_efficientnet_lite(variant: int, drop_rate: float) -> nn.Module:
    """timm's ``tf_efficientnet_lite{variant}`` (TF "same" padding, which the packaged checkpoints need)."""
    import timm

    from workers.backbones.network import Layout

    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    layout = Layout(
        body=("conv_stem", "bn1", "blocks", "conv_head", "bn2"),
        pool="global_pool",
        pre_logits=(),
        classifier="classifier",
        stages=(("conv_stem", "bn1"), *_indexed("blocks", len(net.blocks)), ("conv_head", "bn2")),
    )
    return _wrap(net, layout, net.num_features, drop_rate)


def resnet(name: str) -> nn.Module:
    from torchvision import models

    from workers.backbones.network import Layout

    net = getattr(models, name)(weights=None)
    layers = ("layer1", "layer2", "layer3", "layer4")
    layout = Layout(
        body=("conv1", "bn1", "relu", "maxpool", *layers),
        pool="avgpool",
        pre_logits=(),
        classifier="fc",
        stages=(("conv1", "bn1"), *((layer,) for layer in layers)),
    )
    return _wrap(net, layout, net.fc.in_features)


def vgg_like(name: str) -> nn.Module:
    """AlexNet and VGG: conv stack, 7×7 adaptive pool, fc6 → fc7 (the 4096-d features), fc8 head."""
    from torch import nn
    from torchvision import models

    from workers.backbones.network import Layout

    net = getattr(models, name)(weights=None)
    hidden = list(net.classifier)[:-1]
    drop_rate = 0.0
    if isinstance(hidden[-1], nn.Dropout):  # VGG: dropout right before fc8
        drop_rate = hidden.pop().p
    fc = tuple(f"classifier.{i}" for i in range(len(hidden)))
    last = len(net.classifier) - 1
    layout = Layout(
        body=("features",),
        pool="avgpool",
        pre_logits=fc,
        classifier=f"classifier.{last}",
        stages=(*_split_at_pools(net.features, "features"), fc),
    )
    return _wrap(net, layout, net.classifier[last].in_features, drop_rate)


def googlenet() -> nn.Module:
    """GoogLeNet without the auxiliary heads; ``transform_input`` as torchvision sets it for its weights."""
    from torchvision import models

    from workers.backbones.network import Layout

    net = models.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=True)
    inceptions = {
        "3": ("inception3a", "inception3b"),
        "4": ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
        "5": ("inception5a", "inception5b"),
    }
    layout = Layout(
        body=(
            "_transform_input",
            "conv1",
            "maxpool1",
            "conv2",
            "conv3",
            "maxpool2",
            *inceptions["3"],
            "maxpool3",
            *inceptions["4"],
            "maxpool4",
            *inceptions["5"],
        ),
        pool="avgpool",
        pre_logits=(),
        classifier="fc",
        stages=(("conv1", "conv2", "conv3"), inceptions["3"], inceptions["4"], inceptions["5"]),
    )
    return _wrap(net, layout, net.fc.in_features, net.dropout.p)


def mobilenet_v3(name: str) -> nn.Module:
    """Features are the hidden FC after hardswish (1024 small / 1280 large), as timm's ``pre_logits``."""
    from torchvision import models

    from workers.backbones.network import Layout

    net = getattr(models, name)(weights=None)
    layout = Layout(
        body=("features",),
        pool="avgpool",
        pre_logits=("classifier.0", "classifier.1"),
        classifier="classifier.3",
        stages=(*_indexed("features", len(net.features)), ("classifier.0",)),
    )
    return _wrap(net, layout, net.classifier[0].out_features, net.classifier[2].p)


def efficientnet_tv(name: str) -> nn.Module:
    from torchvision import models

    from workers.backbones.network import Layout

    net = getattr(models, name)(weights=None)
    layout = Layout(
        body=("features",),
        pool="avgpool",
        pre_logits=(),
        classifier="classifier.1",
        stages=_indexed("features", len(net.features)),
    )
    return _wrap(net, layout, net.classifier[1].in_features, net.classifier[0].p)


def squeezenet(name: str) -> nn.Module:
    """SqueezeNet's head is a 1×1 conv + ReLU applied before pooling, so logits come from the map while the
    features are the globally averaged last fire module (512-d)."""
    from torchvision import models

    from workers.backbones.network import Layout

    net = getattr(models, name)(weights=None)
    layout = Layout(
        body=("features",),
        pool="",
        pre_logits=(),
        classifier="classifier.1",
        head="classifier",
        stages=_split_at_pools(net.features, "features"),
    )
    return _wrap(net, layout, net.classifier[1].in_channels)


def lenet5() -> nn.Module:
    from workers.backbones.lenet import LeNet5
    from workers.backbones.network import Layout

    net = LeNet5(num_classes=10)
    layout = Layout(
        body=("features",),
        pool="flatten",
        pre_logits=("fc",),
        classifier="classifier",
        stages=(("features.0",), ("features.3",), ("fc.0",), ("fc.2",)),
    )
    return _wrap(net, layout, 84)
