"""Serving a trained model: a linear probe is the backbone's engine then the stored head; a fine-tuned
network is one more set of weights behind the same export check and engines.

Predictors live in the process's bounded LRU keyed by (tenant, model id); a head loads from npz + JSON only
(nothing from storage is ever unpickled or executed)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from classifiers.scores import softmax, top_k
from core import models as mdl
from core.db import session_scope
from core.errors import Conflict
from core.features import MODEL_PREFIX
from core.storage import get_storage
from workers.backbones import BackboneSpec, WeightsInfo, get_backbone
from workers.runtime.cache import LRUCache


class FinetunedEngine:
    """A fine-tuned network: ONNX Runtime when its export passed the check, else eager torch."""

    def __init__(self, prefix: str) -> None:
        storage = get_storage()
        meta = json.loads(storage.get_bytes(f"{prefix}/finetuned.json"))
        self.spec = get_backbone(meta["backbone"])
        self.labels = list(meta["classes"])
        weights = WeightsInfo(True, meta["digest"], None)
        if meta.get("onnx"):
            from workers.runtime.engines import OnnxEngine

            self._engine: Any = OnnxEngine(storage.get_bytes(f"{prefix}/{meta['onnx']}"), self.spec, weights)
        else:
            import torch

            from workers.backbones import load_model
            from workers.runtime.engines import TorchEngine
            from workers.training.new_head import new_head

            net = load_model(self.spec, pretrained=False)
            new_head(net, len(self.labels), dropout=meta["dropout"], init=meta["init"])
            state = torch.load(io.BytesIO(storage.get_bytes(f"{prefix}/finetuned.pt")), weights_only=True)
            net.load_state_dict(state)
            self._engine = TorchEngine(net.eval(), self.spec, weights, "cpu")

    def features(self, pixels: np.ndarray) -> np.ndarray:
        return self._engine.features(pixels)

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        return softmax(self._engine.logits(pixels))


@dataclass
class Predictor:
    model_id: str
    spec: BackboneSpec
    labels: list[str]
    strategy: str
    _engine: Any
    _head: Any

    @property
    def finetuned(self) -> Any:
        """The fine-tuned network's engine (``features``, ``predict_proba``), for use as a backbone."""
        if self.strategy != "finetune":
            raise Conflict(f"model {self.model_id!r} is a linear probe, not a fine-tuned network")
        return self._engine

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC batch → class probabilities (columns follow ``labels``)."""
        if self.strategy == "finetune":
            return self._engine.predict_proba(pixels)
        return self._head.predict_proba(self._engine.features(pixels))


def _build(tenant_id: str, model_id: str) -> Predictor:
    with session_scope() as s:
        model = mdl.ready_model(s, tenant_id, model_id)
        backbone, prefix, strategy = model.backbone, model.storage_prefix, model.strategy
        digest = model.lineage.get("weights_digest", "")
    if strategy == "finetune":
        engine = FinetunedEngine(prefix)
        return Predictor(model_id, engine.spec, list(engine.labels), strategy, engine, None)
    from classifiers.persistence import load_head
    from workers.plan import resolve_backbone

    storage = get_storage()
    head = load_head(lambda name: storage.get_bytes(f"{prefix}/{name}"))
    spec, _ = resolve_backbone(backbone, True, tenant_id)
    engine = feature_engine(backbone, tenant_id, digest)
    return Predictor(model_id, spec, [str(c) for c in head.classes_], strategy, engine, head)


class PredictorCache:
    """Predictors by (tenant, model id): another tenant's id never hits, and misses raise ``NotFound``."""

    def __init__(self) -> None:
        self._lru = LRUCache()

    def get(self, tenant_id: str, model_id: str) -> Predictor:
        return self._lru.get_or_create((tenant_id, model_id), lambda: _build(tenant_id, model_id))

    def forget(self, model_id: str) -> None:
        self._lru.discard(lambda key: key[1] == model_id)

    def clear(self) -> None:
        self._lru.clear()


PREDICTORS = PredictorCache()


def feature_engine(backbone: str, tenant_id: str, weights_digest: str) -> Any:
    """What computes features for a backbone name: the shared engine of a registered backbone, or the
    fine-tuned network of ``model:<id>`` (from the same bounded cache that serves its predictions)."""
    if backbone.startswith(MODEL_PREFIX):
        return PREDICTORS.get(tenant_id, backbone.removeprefix(MODEL_PREFIX)).finetuned
    from workers.runtime.engines import get_engine

    return get_engine(backbone, pretrained=False if weights_digest == "random" else None)


def top_k_rows(labels: list[str], probs: np.ndarray, k: int) -> list[dict[str, Any]]:
    """Predict's response rows: the best label and score, and the top ``k``."""
    return [
        {"label": top[0][0], "score": top[0][1], "top_k": [{"label": n, "score": s} for n, s in top]}
        for top in top_k(probs, labels, k)
    ]
