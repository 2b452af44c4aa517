"""Serving a trained model: the backbone through the fast inference engine, then the stored head.

Predictors are cached per process in a bounded LRU keyed by model id; a head loads from npz + JSON only
(nothing from storage is ever unpickled or executed)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.db import session_scope
from core.errors import Conflict
from core.settings import get_settings
from core.storage import get_storage
from workers.backbones import BackboneSpec


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
    from workers.models import get_model

    with session_scope() as s:
        model = get_model(s, tenant_id, model_id)
        if model.status != "ready":
            raise Conflict(f"model {model_id!r} is {model.status}; predict once its training job has succeeded")
        backbone, prefix, strategy = model.backbone, model.storage_prefix, model.strategy
        digest = model.lineage.get("weights_digest", "")
    storage = get_storage()
    if strategy == "finetune":
        from workers.finetune import load_finetuned

        engine = load_finetuned(prefix)
        return Predictor(model_id, engine.spec, list(engine.labels), strategy, engine, None)
    from classifiers.persistence import load_head
    from workers.features import feature_engine, resolve_backbone

    head = load_head(lambda name: storage.get_bytes(f"{prefix}/{name}"))
    spec, _ = resolve_backbone(backbone, True, tenant_id)
    engine = feature_engine(backbone, tenant_id, digest)
    return Predictor(model_id, spec, [str(c) for c in head.classes_], strategy, engine, head)


class _PredictorCache:
    """Bounded LRU of predictors; a model id is checked against the caller's tenant on every hit."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[str, Predictor]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tenant_id: str, model_id: str) -> Predictor:
        with self._lock:
            hit = self._items.get(model_id)
            if hit is not None and hit[0] == tenant_id:
                self._items.move_to_end(model_id)
                return hit[1]
        predictor = _build(tenant_id, model_id)  # raises NotFound for another tenant's model
        with self._lock:
            self._items[model_id] = (tenant_id, predictor)
            while len(self._items) > max(1, get_settings().model_cache_size):
                self._items.popitem(last=False)
        return predictor

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._items.pop(model_id, None)


PREDICTORS = _PredictorCache()


def top_k_rows(labels: list[str], probs: np.ndarray, k: int) -> list[dict[str, Any]]:
    k = max(1, min(k, len(labels)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        {
            "label": labels[row[0]],
            "score": float(p[row[0]]),
            "top_k": [{"label": labels[j], "score": float(p[j])} for j in row],
        }
        for p, row in zip(probs, order, strict=True)
    ]
