"""One self-contained ONNX graph per model, for applications that run it without tlserve.

The graph is the backbone's checked export (input ``images``: uint8 N×H×W×C, normalisation inside) followed
by the model's head as plain ONNX ops:

* a linear probe: ``standardise -> (PCA whiten) -> x @ W.T + b -> softmax | normalised one-vs-rest
  sigmoids``, the same arithmetic as ``classifiers.linear_head.LinearHead`` with its stored arrays;
* a fine-tuned network: its own logits, then softmax.

Its one output ``probabilities`` (N × classes) has columns in the order of the class names stored in the
metadata (``tlserve.classes``), next to the preprocessing that turns a file into the input
(``tlserve.preprocessing``: resize the shorter side, centre-crop, RGB or grayscale) and the model's lineage.
Built from stored artifacts only: no torch, no scikit-learn."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from classifiers.linear_head import LinearHead
from classifiers.persistence import load_head
from core import models as mdl
from core.db import session_scope
from core.errors import Conflict
from core.features import MODEL_PREFIX
from core.storage import get_storage
from workers.backbones import BackboneSpec, get_backbone

OUTPUT = "probabilities"
INPUT_DOC = (
    "images: uint8 tensor N x H x W x C (C = 3 RGB, or 1 for grayscale backbones), H = W = input_size: decode, "
    "apply the EXIF orientation, resize so that the shorter side is resize_size ({interpolation}), then "
    "centre-crop input_size x input_size. Normalisation (mean, std on 0-1 values) is inside the graph."
)


def model_graph(tenant_id: str, model_id: str) -> bytes:
    """The model's ONNX graph (see the module docstring); ``Conflict`` when its network has no checked
    ONNX export (the service then serves it with eager torch, and so can this method not)."""
    with session_scope() as s:
        model = mdl.ready_model(s, tenant_id, model_id)
        backbone, prefix, strategy = model.backbone, model.storage_prefix, model.strategy
        lineage = dict(model.lineage or {})
        base_prefix = None
        if backbone.startswith(MODEL_PREFIX):  # a probe on a fine-tuned network's features
            base_prefix = mdl.ready_model(s, tenant_id, backbone.removeprefix(MODEL_PREFIX)).storage_prefix
    storage = get_storage()
    if strategy == "finetune":
        graph, spec, labels = _finetuned(prefix, model_id)
        _append_softmax(graph, "logits")
    else:
        head = load_head(lambda name: storage.get_bytes(f"{prefix}/{name}"))
        if base_prefix is not None:
            graph, spec, _ = _finetuned(base_prefix, backbone)
        else:
            graph, spec = _backbone(backbone, lineage.get("weights_digest", ""))
        labels = [str(c) for c in head.classes_]
        _append_linear_head(graph, head)
    _keep_only_output(graph, n_classes=len(labels))
    _describe(graph, spec, labels, {"model_id": model_id, "strategy": strategy, "backbone": backbone, **lineage})
    onnx.checker.check_model(graph)
    return graph.SerializeToString()


def _finetuned(prefix: str, what: str) -> tuple[onnx.ModelProto, BackboneSpec, list[str]]:
    storage = get_storage()
    meta = json.loads(storage.get_bytes(f"{prefix}/finetuned.json"))
    if not meta.get("onnx"):
        raise Conflict(f"{what}: its network did not pass the ONNX export check, so it has no ONNX graph")
    graph = onnx.load_from_string(storage.get_bytes(f"{prefix}/{meta['onnx']}"))
    return graph, get_backbone(meta["backbone"]), list(meta["classes"])


def _backbone(name: str, weights_digest: str) -> tuple[onnx.ModelProto, BackboneSpec]:
    from workers.runtime.engines import get_engine, onnx_key

    engine = get_engine(name, pretrained=False if weights_digest == "random" else None)
    if engine.name != "onnx":
        raise Conflict(f"backbone {name!r} did not pass the ONNX export check here, so it has no ONNX graph")
    return onnx.load_from_string(get_storage().get_bytes(onnx_key(engine.spec, engine.weights))), engine.spec


class _Builder:
    """Appends nodes and float32 constants to a graph, each with a fresh name."""

    def __init__(self, graph: onnx.GraphProto, prefix: str) -> None:
        self.graph, self.prefix, self.n = graph, prefix, 0

    def name(self) -> str:
        self.n += 1
        return f"{self.prefix}_{self.n}"

    def const(self, value: Any) -> str:
        name = self.name()
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: Any) -> str:
        out = output or self.name()
        self.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=self.name(), **attrs))
        return out


def _append_linear_head(model: onnx.ModelProto, head: LinearHead) -> None:
    """``LinearHead.predict_proba`` on the graph's ``features``, as ONNX ops, into ``probabilities``."""
    a, b = head.arrays, _Builder(model.graph, "head")
    x = "features"
    if "scale_mean" in a:
        x = b.op("Div", b.op("Sub", x, b.const(a["scale_mean"])), b.const(a["scale_scale"]))
    if "pca_components" in a:
        comp = a["pca_components"].astype(np.float64)
        scale = np.sqrt(a["pca_explained_variance"].astype(np.float64))
        scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
        z = b.op("Sub", b.op("MatMul", x, b.const(comp.T)), b.const(a["pca_mean"].reshape(1, -1) @ comp.T))
        x = b.op("Div", z, b.const(scale))
    scores = b.op("Add", b.op("MatMul", x, b.const(a["coef"].T)), b.const(a["intercept"]))
    if head.meta["link"] == "softmax":
        b.op("Softmax", scores, output=OUTPUT, axis=-1)
        return
    p = b.op("Sigmoid", b.op("Neg", b.op("Add", b.op("Mul", scores, b.const(a["calib_a"])), b.const(a["calib_b"]))))
    if a["coef"].shape[0] == 1:  # binary, one row: [1 - p, p]
        b.op("Concat", b.op("Sub", b.const(np.ones((1, 1))), p), p, output=OUTPUT, axis=1)
        return
    axes = b.name()
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), axes))
    b.op("Div", p, b.op("ReduceSum", p, axes, keepdims=1), output=OUTPUT)


def _append_softmax(model: onnx.ModelProto, logits: str) -> None:
    _Builder(model.graph, "head").op("Softmax", logits, output=OUTPUT, axis=-1)


def _keep_only_output(model: onnx.ModelProto, n_classes: int) -> None:
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", n_classes]))


def _describe(model: onnx.ModelProto, spec: BackboneSpec, labels: list[str], lineage: dict[str, Any]) -> None:
    prep = spec.preprocessing
    model.doc_string = (
        f"tlserve model {lineage['model_id']}: {spec.name} + {lineage['strategy']}. Output {OUTPUT}: N x "
        f"{len(labels)} class probabilities, columns in the order of tlserve.classes. "
        + INPUT_DOC.format(interpolation=prep.interpolation)
    )
    meta = {
        "tlserve.classes": json.dumps(labels),
        "tlserve.preprocessing": json.dumps({**asdict(prep), "channels": prep.channels, "layout": "NHWC uint8"}),
        "tlserve.lineage": json.dumps(lineage, default=str),
    }
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
