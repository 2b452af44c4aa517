"""The registry itself (after torchvision's test_extended_models and timm's test_models): every entry,
random weights, declared dims and meta; then real weights and checksums."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import NotFound, WeightsError
from workers.backbones import (
    describe_backbone,
    get_backbone,
    list_backbones,
    load_model,
    registry,
    weights_available,
    weights_info,
)
from workers.backbones.convert import block_positions, rename_efficientnet_pytorch
from workers.backbones.spec import BackboneSpec

NAMES = [spec.name for spec in list_backbones()]
TORCHVISION = [spec.name for spec in list_backbones() if spec.family == "torchvision"]


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A tmp data folder and an empty tmp weights folder: nothing written to, or read from, the home folder."""
    from core import storage
    from core.settings import reset_settings

    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("TLSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TLSERVE_WEIGHTS_DIR", str(weights))
    reset_settings()
    storage._storage_for.cache_clear()
    yield weights
    reset_settings()
    storage._storage_for.cache_clear()


def _image(spec: BackboneSpec, batch: int = 1) -> torch.Tensor:
    prep = spec.preprocessing
    size = (batch, prep.channels, prep.input_size, prep.input_size)
    return torch.randn(size, generator=torch.Generator().manual_seed(0))


# --- the registry -------------------------------------------------------------------------------------------

def test_registry_names() -> None:
    assert set(NAMES) == {
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "alexnet", "vgg11", "vgg16", "googlenet",
        "resnet18", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "squeezenet1_1",
        "lenet5",
    }


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(NotFound) as err:
        get_backbone("resnet1000")
    assert "resnet18" in err.value.message and "efficientnet_lite0" in err.value.message


def test_listing_does_not_import_torch() -> None:
    code = (
        "import sys; from workers.backbones import list_backbones, describe_backbone;"
        "[describe_backbone(s) for s in list_backbones()];"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.parametrize("name", NAMES)
def test_meta_complete(name: str) -> None:
    spec = get_backbone(name)
    prep = spec.preprocessing
    assert spec.weights.license and spec.weights.license != "unknown"
    assert spec.feature_layer and spec.feature_dim > 0 and spec.num_classes > 0
    assert 0 < prep.input_size <= prep.resize_size
    assert prep.interpolation in ("bilinear", "bicubic")
    assert len(prep.mean) == len(prep.std) == prep.channels and all(s > 0 for s in prep.std)
    assert spec.family in ("timm", "torchvision", "tlserve")
    if spec.weights.kind != "none":
        assert spec.weights.filename and spec.weights.url
    card = describe_backbone(spec)
    assert {"name", "feature_dim", "input_size", "weights", "license", "pretrained"} <= card.keys()


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_entries_match_installed_torchvision(name: str) -> None:
    """The registry copies torchvision's Weights metadata so that listing needs no torch; keep them equal."""
    from torchvision.models import get_model_weights
    from torchvision.transforms import InterpolationMode

    spec = get_backbone(name)
    weights = get_model_weights(name).DEFAULT
    tf = weights.transforms()
    assert spec.weights.filename == weights.url.rsplit("/", 1)[-1]
    assert spec.weights.url == weights.url
    assert spec.preprocessing.input_size == tf.crop_size[0]
    assert spec.preprocessing.resize_size == tf.resize_size[0]
    assert InterpolationMode(spec.preprocessing.interpolation) == tf.interpolation
    assert spec.preprocessing.mean == tuple(tf.mean) and spec.preprocessing.std == tuple(tf.std)
    assert spec.num_classes == len(weights.meta["categories"])


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_preprocessing_follows_timm(variant: int) -> None:
    import math

    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(f"tf_efficientnet_lite{variant}")
    prep = get_backbone(f"efficientnet_lite{variant}").preprocessing
    assert (prep.input_size, prep.interpolation, prep.mean, prep.std) == (
        cfg.input_size[1], cfg.interpolation, cfg.mean, cfg.std
    )
    assert prep.resize_size == math.floor(cfg.input_size[1] / cfg.crop_pct)


# --- every backbone, random weights -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_random_model_interface(name: str) -> None:
    spec = get_backbone(name)
    model = load_model(spec, pretrained=False)
    x = _image(spec)
    with torch.no_grad():
        fmap = model.forward_features(x)
        features = model.forward_head(fmap, pre_logits=True)
        logits = model(x)
        both = model.forward_all(x)
    assert fmap.ndim == 4
    assert features.shape == (1, spec.feature_dim) == (1, model.num_features)
    assert logits.shape == (1, spec.num_classes)
    torch.testing.assert_close(both[0], features)
    torch.testing.assert_close(both[1], logits)

    stages = model.stages()
    assert len(stages) == spec.num_stages  # the declared count bounds "last:N" without building the model
    assert stages and all(any(True for _ in s.parameters()) for s in stages)
    covered = {id(p) for s in stages for p in s.parameters()} | {id(p) for p in model.classifier.parameters()}
    assert covered == {id(p) for p in model.parameters()}

    model.reset_classifier(7)
    with torch.no_grad():
        assert model(x).shape == (1, 7)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), features)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape[1] == (spec.feature_dim if spec.name != "squeezenet1_1" else 512)


def test_random_weights_are_seeded() -> None:
    spec = get_backbone("resnet18")
    a, b = load_model(spec, pretrained=False), load_model(spec, pretrained=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert weights_info(spec).digest == "random" and not weights_info(spec).pretrained


def test_model_deepcopies_and_trains() -> None:
    """Layouts are paths, so a deep copy (best-epoch snapshot) drives its own copy of the network."""
    import copy

    spec = get_backbone("lenet5")
    model = load_model(spec, pretrained=False)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.classifier.bias.add_(1.0)
    x = _image(spec, 2)
    assert not torch.allclose(model(x), clone(x))
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- pretrained weights -------------------------------------------------------------------------------------

def test_block_positions_and_renaming() -> None:
    assert block_positions([1, 2]) == [(0, 0), (1, 0), (1, 1)]
    renamed = rename_efficientnet_pytorch(
        {
            "_conv_stem.weight": 0, "_bn0.bias": 1,
            "_blocks.0._depthwise_conv.weight": 2, "_blocks.0._bn1.weight": 3, "_blocks.0._project_conv.weight": 4,
            "_blocks.0._bn2.running_mean": 5,
            "_blocks.2._expand_conv.weight": 6, "_blocks.2._bn0.weight": 7, "_blocks.2._depthwise_conv.weight": 8,
            "_blocks.2._bn1.bias": 9, "_blocks.2._project_conv.weight": 10, "_blocks.2._bn2.weight": 11,
            "_conv_head.weight": 12, "_bn1.running_var": 13, "_fc.bias": 14,
        },
        [1, 2],
    )
    assert renamed == {
        "conv_stem.weight": 0, "bn1.bias": 1,
        "blocks.0.0.conv_dw.weight": 2, "blocks.0.0.bn1.weight": 3, "blocks.0.0.conv_pw.weight": 4,
        "blocks.0.0.bn2.running_mean": 5,
        "blocks.1.1.conv_pw.weight": 6, "blocks.1.1.bn1.weight": 7, "blocks.1.1.conv_dw.weight": 8,
        "blocks.1.1.bn2.bias": 9, "blocks.1.1.conv_pwl.weight": 10, "blocks.1.1.bn3.weight": 11,
        "conv_head.weight": 12, "bn2.running_var": 13, "classifier.bias": 14,
    }


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_packaged_lite_weights_load_strict(variant: int) -> None:
    spec = get_backbone(f"efficientnet_lite{variant}")
    info = weights_info(spec)
    assert info.pretrained and info.digest == spec.weights.sha256 and weights_available(spec)
    model = load_model(spec, pretrained=True)  # load_state_dict(strict=True) inside
    file_state = torch.load(info.path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.classifier.weight, file_state["_fc.weight"])
    last = sum(len(stage) for stage in model.net.blocks) - 1
    last_block = model.net.blocks[-1][-1]
    torch.testing.assert_close(last_block.conv_pwl.weight, file_state[f"_blocks.{last}._project_conv.weight"])


def _top(model: torch.nn.Module, spec: BackboneSpec, image: np.ndarray, k: int) -> list[str]:
    from PIL import Image

    from workers.runtime.imagenet import imagenet_categories
    from workers.runtime.preprocess import load_rgb

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    pixels = torch.from_numpy(load_rgb(buf.getvalue(), spec.preprocessing)).permute(2, 0, 1).float() / 255
    prep = spec.preprocessing
    x = ((pixels - torch.tensor(prep.mean).view(-1, 1, 1)) / torch.tensor(prep.std).view(-1, 1, 1))[None]
    with torch.no_grad():
        top = model(x)[0].topk(k).indices.tolist()
    return [imagenet_categories()[i] for i in top]


def test_lite0_recognises_real_photos() -> None:
    import skimage.data

    spec = get_backbone("efficientnet_lite0")
    model = load_model(spec, pretrained=True)
    assert _top(model, spec, skimage.data.coffee(), 1) == ["espresso"]
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(_top(model, spec, skimage.data.chelsea(), 3))


# --- weights files and checksums ----------------------------------------------------------------------------

def _save_state(state: dict[str, torch.Tensor], path: Path) -> str:
    torch.save(state, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wrong_checksum_is_weights_error(env: Path) -> None:
    spec = get_backbone("resnet18")
    assert not weights_available(spec) and weights_info(spec).digest == "random"
    _save_state(load_model(spec, pretrained=False).net.state_dict(), env / spec.weights.filename)
    assert weights_available(spec)  # present (listing), but it is not torchvision's file
    with pytest.raises(WeightsError, match="checksum"):
        weights_info(spec)
    with pytest.raises(WeightsError, match="checksum"):
        load_model(spec)
    assert not weights_info(spec, pretrained=False).pretrained  # random weights stay available


def test_missing_file_with_pretrained_true_is_weights_error() -> None:
    with pytest.raises(WeightsError, match="resnet18-f37072fd.pth"):
        load_model(get_backbone("resnet18"), pretrained=True)


def test_package_file_with_wrong_digest_is_weights_error(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_backbone("efficientnet_lite0")
    bad = dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, sha256="0" * 64))
    with pytest.raises(WeightsError, match="checksum"):
        load_model(bad)


def _tmp_entry(monkeypatch: pytest.MonkeyPatch, base: str, filename: str) -> BackboneSpec:
    spec = get_backbone(base)
    tmp = dataclasses.replace(spec, name=f"{base}_tmp", weights=dataclasses.replace(spec.weights, filename=filename))
    monkeypatch.setitem(registry._REGISTRY, tmp.name, tmp)
    return tmp


def test_matching_file_makes_entry_pretrained(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = load_model(get_backbone("resnet18"), pretrained=False).net.state_dict()
    state["fc.bias"] = torch.full_like(state["fc.bias"], 0.5)
    staging = env / "staging.pth"
    sha = _save_state(state, staging)
    spec = _tmp_entry(monkeypatch, "resnet18", f"resnet18-{sha[:8]}.pth")
    staging.rename(env / spec.weights.filename)

    info = weights_info(spec)
    assert info.pretrained and info.digest == sha and info.path == str(env / spec.weights.filename)
    assert describe_backbone(spec)["pretrained"]
    model = load_model(spec)
    assert torch.equal(model.net.fc.bias, torch.full((1000,), 0.5))


def test_googlenet_file_with_aux_heads_loads(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's GoogLeNet checkpoint carries aux heads; tlserve builds without them."""
    from torchvision.models import GoogLeNet

    published = GoogLeNet(aux_logits=True, transform_input=True, init_weights=False)
    staging = env / "staging.pth"
    sha = _save_state(published.state_dict(), staging)
    assert any(k.startswith("aux1.") for k in published.state_dict())
    spec = _tmp_entry(monkeypatch, "googlenet", f"googlenet-{sha[:8]}.pth")
    staging.rename(env / spec.weights.filename)
    model = load_model(spec, pretrained=True)
    assert torch.equal(model.net.fc.weight, published.fc.weight)


def test_imagenet_class_names_file_matches_torchvision_metadata() -> None:
    """The shipped data file (read by the torch-free API) is exactly torchvision's weights metadata."""
    from workers.runtime.imagenet import from_torchvision, imagenet_categories

    imagenet_categories.cache_clear()
    names = imagenet_categories()
    assert len(names) == 1000
    assert list(names) == from_torchvision()
