"""Inference engines: ONNX Runtime equals torch on real photos, exports once into storage, falls back to
torch when the check fails, caches a bounded number of engines, and gives ImageNet top-k."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from core.errors import InvalidInput, ServiceUnavailable, WeightsError
from workers.backbones import BackboneSpec, get_backbone, load_model, weights_info
from workers.runtime import engines as engine_mod
from workers.runtime.engines import (
    OnnxEngine,
    TorchEngine,
    classify,
    clear_engine_cache,
    get_engine,
    onnx_key,
    select_device,
)
from workers.runtime.preprocess import load_rgb, stack_batch


def _reset() -> None:
    from core import storage
    from core.settings import reset_settings

    reset_settings()
    storage._storage_for.cache_clear()
    clear_engine_cache()


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the module, so each backbone is exported once."""
    return tmp_path_factory.mktemp("engine-data")


@pytest.fixture(autouse=True)
def env(shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TLSERVE_DATA_DIR", str(shared_dir))
    monkeypatch.setenv("TLSERVE_GRAPH_CACHE_DIR", str(shared_dir.parent / "graph-cache"))
    monkeypatch.setenv("TLSERVE_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TLSERVE_DEVICE", "cpu")
    _reset()
    yield shared_dir
    _reset()


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder of the test's own, for tests about what gets stored."""
    monkeypatch.setenv("TLSERVE_DATA_DIR", str(tmp_path / "data"))
    _reset()
    return tmp_path / "data"


def photos(spec: BackboneSpec) -> np.ndarray:
    def jpeg(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    images = [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.astronaut()]
    return stack_batch([load_rgb(jpeg(p), spec.preprocessing) for p in images])


@pytest.mark.parametrize(("name", "pretrained"), [("efficientnet_lite0", True), ("resnet18", False)])
def test_onnx_matches_torch_on_real_photos(name: str, pretrained: bool) -> None:
    engine = get_engine(name, pretrained=pretrained)
    assert isinstance(engine, OnnxEngine) and engine.weights.pretrained is pretrained
    spec = engine.spec
    reference = TorchEngine(load_model(spec, pretrained=pretrained), spec, weights_info(spec), "cpu")
    batch = photos(spec)
    features, logits = engine.run(batch)
    ref_features, ref_logits = reference.run(batch)
    assert features.dtype == np.float32 and features.shape == (3, spec.feature_dim)
    assert logits.shape == (3, spec.num_classes)
    assert np.abs(features - ref_features).max() <= 1e-4
    assert np.abs(logits - ref_logits).max() <= 1e-4
    np.testing.assert_array_equal(engine.features(batch), features)
    np.testing.assert_array_equal(engine.logits(batch), logits)


def test_lite0_imagenet_top_k() -> None:
    engine = get_engine("efficientnet_lite0")
    top = classify(engine, photos(engine.spec), top_k=3)
    assert top[0][0][0] == "espresso"
    assert {"tabby", "tiger cat", "Egyptian cat"} & {label for label, _ in top[1]}
    assert all(len(row) == 3 and 0 <= row[0][1] <= 1 and row[0][1] >= row[1][1] for row in top)


def test_exported_once_and_reused_without_torch(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.storage import get_storage

    first = get_engine("efficientnet_lite0")
    key = onnx_key(first.spec, first.weights)
    assert key.startswith(f"engines/efficientnet_lite0/{first.weights.digest}/") and get_storage().exists(key)
    clear_engine_cache()

    def no_export(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("exported again")

    monkeypatch.setattr("workers.backbones.graph.export_onnx", no_export)
    assert isinstance(get_engine("efficientnet_lite0"), OnnxEngine)
    code = (
        "import sys, numpy as np; from workers.runtime.engines import get_engine, OnnxEngine;"
        "e = get_engine('efficientnet_lite0'); assert isinstance(e, OnnxEngine);"
        "assert e.features(np.zeros((2, 224, 224, 3), np.uint8)).shape == (2, 1280);"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=Path(__file__).parents[2],
        env={"TLSERVE_DATA_DIR": str(env), "TLSERVE_DEVICE": "cpu", "PATH": "/usr/bin:/bin"},
    )


def test_a_graph_exported_for_one_data_folder_serves_every_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The installation's graph cache: ``warm`` exports once (as ``make install`` does), and a fresh data
    folder's first engine then loads that graph instead of exporting again."""
    from core.storage import get_storage

    monkeypatch.setenv("TLSERVE_GRAPH_CACHE_DIR", str(tmp_path / "graphs"))
    _reset()
    assert engine_mod.warm(["efficientnet_lite0", "lenet5"]) == {
        "efficientnet_lite0": "exported",
        "lenet5": "no weights",
    }
    assert engine_mod.warm(["efficientnet_lite0"]) == {"efficientnet_lite0": "cached"}
    for folder in ("a", "b"):
        monkeypatch.setenv("TLSERVE_DATA_DIR", str(tmp_path / folder))
        _reset()

        def no_export(*args: object, **kwargs: object) -> bytes:
            raise AssertionError("exported again")

        monkeypatch.setattr("workers.backbones.graph.export_onnx", no_export)
        engine = get_engine("efficientnet_lite0")
        assert isinstance(engine, OnnxEngine)
        assert get_storage().exists(onnx_key(engine.spec, engine.weights))  # copied into this data folder
        assert engine.features(np.zeros((2, 224, 224, 3), np.uint8)).shape == (2, 1280)


def test_failed_check_falls_back_to_torch(isolated: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:  # type: ignore[no-untyped-def]
    from core.storage import get_storage

    monkeypatch.setattr(engine_mod, "ONNX_ATOL", -1.0)  # no export can pass
    with caplog.at_level(logging.WARNING, logger="workers.runtime.engines"):
        engine = get_engine("lenet5")
    assert isinstance(engine, TorchEngine)
    assert "serving eager torch" in caplog.text
    assert not get_storage().list("engines")  # a failed export is never stored
    assert engine.features(np.zeros((2, 32, 32, 1), np.uint8)).shape == (2, 84)


def test_bad_weights_file_is_weights_error(env: Path) -> None:
    import torch

    folder = Path(engine_mod.get_settings().weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"not": torch.zeros(1)}, folder / get_backbone("resnet18").weights.filename)
    with pytest.raises(WeightsError):
        get_engine("resnet18")
    assert get_engine("resnet18", pretrained=False).weights.digest == "random"


def test_engine_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLSERVE_MODEL_CACHE_SIZE", "1")
    _reset()
    lenet = get_engine("lenet5")
    assert get_engine("lenet5") is lenet
    get_engine("squeezenet1_1", pretrained=False)
    assert len(engine_mod._ENGINES) == 1
    assert get_engine("lenet5") is not lenet  # evicted, rebuilt (from the stored .onnx)


def test_grayscale_engine_chunks_and_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = get_engine("lenet5")
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)
    whole = engine.features(batch)
    monkeypatch.setenv("TLSERVE_BATCH_SIZE", "2")
    _reset()
    chunked = get_engine("lenet5")
    assert chunked.chunk == 2
    np.testing.assert_allclose(chunked.features(batch), whole, atol=1e-6)
    assert chunked.features(batch[:0]).shape == (0, 84) and chunked.logits(batch[:0]).shape == (0, 10)
    for bad in (batch.astype(np.float32), batch[..., 0], np.zeros((1, 32, 32, 3), np.uint8)):
        with pytest.raises(InvalidInput):
            chunked.features(bad)
    assert classify(chunked, batch, top_k=2)[0][0][0] in {str(i) for i in range(10)}
    with pytest.raises(InvalidInput):
        classify(chunked, batch, top_k=0)
    assert chunked.key.startswith("onnxruntime-")


def test_select_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert select_device() == "cpu"  # TLSERVE_DEVICE=cpu
    monkeypatch.setenv("TLSERVE_DEVICE", "auto")
    _reset()
    best = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device() == best
    if not torch.cuda.is_available():
        monkeypatch.setenv("TLSERVE_DEVICE", "cuda")
        _reset()
        with pytest.raises(ServiceUnavailable):
            select_device()


@pytest.mark.gpu
@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs CUDA")
def test_cuda_engine_close_to_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLSERVE_DEVICE", "cuda")
    _reset()
    gpu = get_engine("efficientnet_lite0")
    assert isinstance(gpu, TorchEngine) and gpu.cuda and gpu.amp_dtype is not None
    monkeypatch.setenv("TLSERVE_DEVICE", "cpu")
    _reset()
    cpu = get_engine("efficientnet_lite0")
    batch = photos(cpu.spec)
    assert classify(gpu, batch, 1)[0][0][0] == "espresso"
    features_gpu, features_cpu = gpu.features(batch), cpu.features(batch)
    norms = np.linalg.norm(features_gpu, axis=1) * np.linalg.norm(features_cpu, axis=1)
    cos = (features_gpu * features_cpu).sum(1) / norms
    assert cos.min() > 0.99  # bf16/fp16 autocast
