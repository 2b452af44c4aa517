"""Inference engines: uint8 N×H×W×C batches in, float32 features and logits out.

On CPU the backbone runs in ONNX Runtime (measured here 3-9× faster than eager torch, and a process that
holds only numpy + ORT needs ~95 MiB instead of ~724 MiB with torch). The graph is exported once per
(backbone, weights digest, preprocessing), checked against torch on real photos, and kept in artifact
storage, so later processes load the .onnx without importing torch at all. On CUDA the engine is eager
torch with AMP, channels_last and pinned-memory copies.

Engines are cached per process in a bounded LRU keyed by (backbone, weights digest, engine kind); nothing
is loaded at import time.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from classifiers import scores
from core.errors import InvalidInput, ServiceUnavailable
from core.settings import get_settings
from workers.backbones import BackboneSpec, WeightsInfo, get_backbone, weights_info
from workers.backbones.weights import RANDOM
from workers.runtime.cache import LRUCache

if TYPE_CHECKING:
    from workers.backbones.network import BackboneModel

log = logging.getLogger(__name__)

ENGINE_VERSION = 1  # bump when the exported graph or the numerics of an engine change (feature cache keys)
ONNX_ATOL = 1e-4  # max abs difference ONNX Runtime vs torch on real photos (× the output scale when above 1)


class Engine(Protocol):
    name: str  # "onnx" | "torch"
    key: str  # engine name + runtime version + ENGINE_VERSION, for feature-cache keys
    spec: BackboneSpec
    weights: WeightsInfo

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def features(self, batch: np.ndarray) -> np.ndarray: ...
    def logits(self, batch: np.ndarray) -> np.ndarray: ...


class _BatchedEngine:
    """Input checks and chunking (``settings.batch_size``) shared by the engines."""

    name = "base"
    key = "base"

    def __init__(self, spec: BackboneSpec, weights: WeightsInfo) -> None:
        self.spec = spec
        self.weights = weights
        self.chunk = max(1, get_settings().batch_size)

    def _forward(self, batch: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        raise NotImplementedError

    def _check(self, batch: np.ndarray) -> np.ndarray:
        prep = self.spec.preprocessing
        want = (prep.input_size, prep.input_size, prep.channels)
        if not isinstance(batch, np.ndarray) or batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != want:
            got = f"{batch.dtype} {batch.shape}" if isinstance(batch, np.ndarray) else type(batch).__name__
            raise InvalidInput(f"{self.spec.name} takes uint8 N×{want[0]}×{want[1]}×{want[2]} batches, got {got}")
        return np.ascontiguousarray(batch)

    def _outputs(self, batch: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        batch = self._check(batch)
        if len(batch) == 0:
            dims = {"features": self.spec.feature_dim, "logits": self.num_classes}
            return [np.zeros((0, dims[o]), np.float32) for o in outputs]
        parts = [self._forward(batch[i : i + self.chunk], outputs) for i in range(0, len(batch), self.chunk)]
        return [np.concatenate([p[j] for p in parts]).astype(np.float32, copy=False) for j in range(len(outputs))]

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, logits = self._outputs(batch, ("features", "logits"))
        return features, logits

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self._outputs(batch, ("features",))[0]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self._outputs(batch, ("logits",))[0]


class OnnxEngine(_BatchedEngine):
    """ONNX Runtime on CPU: ``ort_threads`` intra-op threads, one inter-op, sequential, all graph opts."""

    name = "onnx"

    def __init__(self, model: str | bytes, spec: BackboneSpec, weights: WeightsInfo) -> None:
        import onnxruntime as ort

        super().__init__(spec, weights)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = get_settings().ort_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        self.key = f"onnxruntime-{ort.__version__}-x{ENGINE_VERSION}"

    def _forward(self, batch: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        return self.session.run(list(outputs), {"images": batch})


class TorchEngine(_BatchedEngine):
    """Eager torch. CUDA: autocast bf16 (fp16 where bf16 is missing), channels_last, pinned memory and
    non-blocking copies. CPU: fp32 (bf16 is a slow fallback on these CPUs), ``torch_threads`` threads."""

    name = "torch"

    def __init__(self, model: BackboneModel, spec: BackboneSpec, weights: WeightsInfo, device: str) -> None:
        import torch

        from workers.backbones.graph import InferenceGraph

        super().__init__(spec, weights)
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        graph = InferenceGraph(model, spec.preprocessing).eval().to(self.device)
        self.amp_dtype: Any = None
        if self.cuda:
            graph = graph.to(memory_format=torch.channels_last)
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif self.device.type == "cpu":
            torch.set_num_threads(get_settings().torch_threads)
        self.graph = graph
        amp = f"-{str(self.amp_dtype).removeprefix('torch.')}" if self.amp_dtype else ""
        self.key = f"torch-{torch.__version__}-{self.device.type}{amp}-x{ENGINE_VERSION}"

    def _forward(self, batch: np.ndarray, outputs: tuple[str, ...]) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.cuda:
                x = x.pin_memory().to(self.device, non_blocking=True)
            elif self.device.type != "cpu":
                x = x.to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                features, logits = self.graph(x)
            named = {"features": features, "logits": logits}
            return [named[o].float().cpu().numpy() for o in outputs]


# --- device -------------------------------------------------------------------------------------------------


def _may_have_accelerator() -> bool:
    """Cheap probe, so that a CPU-only process with an exported .onnx never imports torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return sys.platform == "darwin"
    return sys.platform == "darwin" or bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def select_device() -> str:
    """ "cuda", "mps" or "cpu" per ``settings.device`` ("auto" takes the best present)."""
    wanted = get_settings().device
    if wanted == "cpu" or (wanted == "auto" and "torch" not in sys.modules and not _may_have_accelerator()):
        return "cpu"
    import torch

    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    if wanted in ("auto", "mps") and torch.backends.mps.is_available():
        return "mps"
    if wanted != "auto":
        raise ServiceUnavailable(f"TLSERVE_DEVICE={wanted} but no such device is available")
    return "cpu"


# --- building engines ---------------------------------------------------------------------------------------


def onnx_key(spec: BackboneSpec, weights: WeightsInfo) -> str:
    """``engines/<backbone>/<weights digest>/<prep key>-x<ENGINE_VERSION>.onnx`` in artifact storage. Seeded
    random weights depend on the torch version, so that goes into their digest part."""
    digest = weights.digest if weights.digest != RANDOM else f"{RANDOM}-torch{version('torch')}"
    prep = re.sub(r"[^A-Za-z0-9._=-]", "_", spec.preprocessing.key())
    return f"engines/{spec.name}/{digest}/{prep}-x{ENGINE_VERSION}.onnx"


# --- the export check (pretrained backbones and fine-tuned networks alike) ----------------------------------


def reference_batch(spec: BackboneSpec) -> np.ndarray:
    """Real photos for the export check: scikit-learn's bundled china.jpg and flower.jpg and their mirror
    images (four, so the check also runs a batch size other than the traced one)."""
    from workers.runtime.preprocess import load_rgb, stack_batch

    found = importlib.util.find_spec("sklearn")
    folder = Path(next(iter(found.submodule_search_locations or []))) / "datasets" / "images" if found else None
    photos = [folder / f for f in ("china.jpg", "flower.jpg")] if folder else []
    if not all(p.is_file() for p in photos):
        log.warning("scikit-learn's sample photos are missing; checking the ONNX export on noise")
        rng = np.random.default_rng(0)
        prep = spec.preprocessing
        return rng.integers(0, 256, (4, prep.input_size, prep.input_size, prep.channels), dtype=np.uint8)
    arrays = [load_rgb(p, spec.preprocessing) for p in photos]
    return stack_batch(arrays + [a[:, ::-1] for a in arrays])


def export_error(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> float:
    """Max abs difference, divided by the reference's magnitude where that exceeds 1: fp32 rounding grows
    with the values (VGG logits reach tens), and a spurious failure would cost a 3-9× slower engine."""
    return max(
        float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(y)))) for x, y in zip(got, want, strict=True)
    )


def export_checked(model: BackboneModel, spec: BackboneSpec, weights: WeightsInfo) -> bytes | None:
    """The ONNX graph of ``model`` (features and logits), or ``None`` when the export fails or differs
    from eager torch by more than ``ONNX_ATOL`` on real photos (the caller then serves torch)."""
    from workers.backbones.graph import export_onnx

    model = model.cpu().eval()
    sample = reference_batch(spec)
    try:
        data = export_onnx(model, spec.preprocessing, sample[:2])
        diff = export_error(
            OnnxEngine(data, spec, weights).run(sample), TorchEngine(model, spec, weights, "cpu").run(sample)
        )
    except Exception:
        log.warning("ONNX export of %s failed; serving it with eager torch", spec.name, exc_info=True)
        return None
    if diff > ONNX_ATOL:
        msg = "ONNX export of %s differs from torch by %.2e (scaled) > %.0e; serving eager torch"
        log.warning(msg, spec.name, diff, ONNX_ATOL)
        return None
    log.info("exported %s to ONNX (scaled max abs diff vs torch %.2e)", spec.name, diff)
    return data


def _export_checked(spec: BackboneSpec, weights: WeightsInfo, model: BackboneModel) -> Engine:
    """Export and check; store the .onnx only when it passes (in the data folder's storage and in the
    installation's graph cache), else serve eager torch."""
    data = export_checked(model, spec, weights)
    if data is None:
        return TorchEngine(model, spec, weights, "cpu")
    from core.storage import get_storage

    get_storage().put_bytes(onnx_key(spec, weights), data)  # atomic: other processes see all or nothing
    _share_graph(spec, weights, data)
    return OnnxEngine(data, spec, weights)


def _shared_path(spec: BackboneSpec, weights: WeightsInfo) -> Path | None:
    folder = get_settings().graph_cache_dir
    if not folder or str(folder) in ("", ".") or weights.digest == RANDOM:
        return None
    libraries = f"torch{version('torch')}-onnx{version('onnx')}"
    return Path(folder) / libraries / onnx_key(spec, weights)


def shared_graph(spec: BackboneSpec, weights: WeightsInfo) -> Path | None:
    """The installation-wide copy of this backbone's checked export, if one was made."""
    path = _shared_path(spec, weights)
    return path if path is not None and path.is_file() else None


def _share_graph(spec: BackboneSpec, weights: WeightsInfo, data: bytes) -> None:
    path = _shared_path(spec, weights)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers see the whole graph or none
    except OSError:
        log.warning("could not write the shared graph cache %s", path, exc_info=True)


def warm(backbone_names: Sequence[str]) -> dict[str, str]:
    """Export (and check) these backbones ahead of the first job, into the shared graph cache; returns
    ``{name: "cached" | "exported" | "torch" | "no weights"}``."""
    from workers.backbones.load import load_model

    done: dict[str, str] = {}
    for name in backbone_names:
        spec = get_backbone(name)
        weights = weights_info(spec)
        if not weights.pretrained:
            done[name] = "no weights"
        elif shared_graph(spec, weights) is not None:
            done[name] = "cached"
        else:
            data = export_checked(load_model(spec, pretrained=True), spec, weights)
            if data is not None:
                _share_graph(spec, weights, data)
            done[name] = "exported" if data is not None else "torch"
    return done


def build_engine(spec: BackboneSpec, weights: WeightsInfo, device: str) -> Engine:
    """A new engine (uncached): the stored .onnx if there is one, else load torch weights and export."""
    if device == "cpu":
        from core.storage import get_storage

        storage = get_storage()
        key = onnx_key(spec, weights)
        if not storage.exists(key) and (shared := shared_graph(spec, weights)) is not None:
            storage.put_bytes(key, shared.read_bytes())  # exported before, for another data folder
        if storage.exists(key):  # the common case: no torch in this process at all
            return OnnxEngine(str(storage.local_path(key)), spec, weights)
    from workers.backbones.load import load_model

    if device == "cpu":
        return _export_checked(spec, weights, load_model(spec, pretrained=weights.pretrained))
    return TorchEngine(load_model(spec, pretrained=weights.pretrained), spec, weights, device)


_ENGINES = LRUCache()


def get_engine(backbone_name: str, *, pretrained: bool | None = None) -> Engine:
    """The process's engine for a backbone: ONNX Runtime on CPU, torch on CUDA/MPS. ``pretrained`` as in
    ``load_model``; an unknown name → ``NotFound``, a bad weights file → ``WeightsError``."""
    spec = get_backbone(backbone_name)
    weights = weights_info(spec, pretrained=pretrained)
    device = select_device()
    kind = "onnx" if device == "cpu" else "torch"
    key = (spec.name, weights.digest, kind, device)
    return _ENGINES.get_or_create(key, lambda: build_engine(spec, weights, device))


def clear_engine_cache() -> None:
    _ENGINES.clear()


# --- ImageNet top-k -----------------------------------------------------------------------------------------


def class_names(spec: BackboneSpec, num_classes: int) -> tuple[str, ...]:
    if num_classes == 1000 and spec.num_classes == 1000 and "imagenet" in spec.tags:
        from workers.runtime.imagenet import imagenet_categories

        return imagenet_categories()
    return tuple(str(i) for i in range(num_classes))


def classify(engine: Engine, batch: np.ndarray, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class name, softmax probability) per image, from the backbone's own head."""
    if top_k < 1:
        raise InvalidInput("top_k must be at least 1")
    probs = scores.softmax(engine.logits(batch))
    return scores.top_k(probs, class_names(engine.spec, probs.shape[1]), top_k)
