"""Serving a trained model: a linear probe is the backbone's engine then the stored head; a fine-tuned
network is one more set of weights behind the same export check and engines.

Predictors live in the process's bounded LRU keyed by (tenant, model id), re-checked against the model's
row at most once a second; a head loads from npz + JSON only (nothing from storage is ever unpickled or
executed)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from classifiers.scores import softmax, top_k
from core import models as mdl
from core.db import session_scope
from core.errors import Conflict, InvalidInput, NotFound
from core.features import MODEL_PREFIX
from core.settings import get_settings
from core.storage import get_storage
from workers.backbones import BackboneSpec, WeightsInfo, get_backbone
from workers.runtime.cache import LRUCache

log = logging.getLogger(__name__)


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


def _stamp(tenant_id: str, model_id: str) -> str:
    with session_scope() as s:
        return mdl.serving_stamp(s, tenant_id, model_id)


@dataclass
class _Entry:
    predictor: Predictor
    stamp: str  # the row's artifact when it was read for this predictor
    checked_at: float  # monotonic time of the last read that confirmed it (before the build, for a new one)
    epoch: int  # the cache's forget count when the build began


class PredictorCache:
    """Predictors by (tenant, model id): another tenant's id never hits, and misses raise ``NotFound``.

    Several API processes serve the same models, and a model deleted or replaced through one of them must
    stop serving in all: an entry is re-checked against its row (one small query) when it was last
    confirmed more than ``settings.serving_revalidate_s`` ago, so at most once a second per model. A miss
    builds once, however many requests miss together (a lock per key), and a build that began before a
    ``forget`` in this process is returned to its caller but never cached."""

    def __init__(self, build: Callable[[str, str], Predictor] = _build, stamp: Callable[[str, str], str] = _stamp):
        self._lru = LRUCache()
        self._build, self._stamp = build, stamp
        self._epoch = 0

    def fresh(self, tenant_id: str, model_id: str) -> Predictor | None:
        """The cached predictor while it needs no re-check (no query, no build), else None: a lookup that
        never blocks, for the event loop; ``get`` does the rest, off it."""
        entry: _Entry | None = self._lru.peek((tenant_id, model_id))
        if entry is not None and time.monotonic() - entry.checked_at < get_settings().serving_revalidate_s:
            return entry.predictor
        return None

    def get(self, tenant_id: str, model_id: str) -> Predictor:
        key = (tenant_id, model_id)
        entry: _Entry | None = self._lru.peek(key)
        if entry is not None:
            now = time.monotonic()
            if now - entry.checked_at < get_settings().serving_revalidate_s:
                return entry.predictor
            entry.checked_at = now  # one re-check at a time: requests arriving meanwhile use the entry
            try:
                stamp = self._stamp(tenant_id, model_id)
            except (NotFound, Conflict):
                self._lru.discard(lambda k: k == key)
                raise
            except SQLAlchemyError:  # the database is down: nothing can be deleted either; keep serving
                log.warning("could not re-check model %s against the database; serving the cached one", model_id)
                return entry.predictor
            if stamp == entry.stamp:
                return entry.predictor
            self._lru.discard(lambda k: k == key)  # replaced: build anew
        epoch = self._epoch
        made: _Entry = self._lru.get_or_create(
            key, lambda: self._make(tenant_id, model_id, epoch), keep=lambda e: e.epoch == self._epoch
        )
        return made.predictor

    def _make(self, tenant_id: str, model_id: str, epoch: int) -> _Entry:
        checked_at = time.monotonic()
        stamp = self._stamp(tenant_id, model_id)  # read before the build: a delete after it is seen next check
        return _Entry(self._build(tenant_id, model_id), stamp, checked_at, epoch)

    def forget(self, model_id: str) -> None:
        self._epoch += 1  # first: a build running now cannot put the model back
        self._lru.discard(lambda key: key[1] == model_id)

    def clear(self) -> None:
        self._epoch += 1
        self._lru.clear()

    def __len__(self) -> int:
        return len(self._lru)


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


# --- test-time augmentation ---------------------------------------------------------------------------------

TTA: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "hflip": lambda pixels: pixels[:, :, ::-1],  # N×H×W×C: mirror left to right
    "vflip": lambda pixels: pixels[:, ::-1],  # upside down
}


def check_tta(names: Sequence[str]) -> list[str]:
    """The test-time augmentations asked for, each once, in the order given; an unknown one → ``InvalidInput``
    naming the allowed values."""
    unknown = [n for n in dict.fromkeys(names) if n not in TTA]
    if unknown:
        raise InvalidInput(
            f"unknown tta {', '.join(map(repr, unknown))}: allowed values are {', '.join(TTA)} "
            "(repeat the field for several, e.g. tta=hflip&tta=vflip)"
        )
    return list(dict.fromkeys(names))


def augment(pixels: np.ndarray, tta: Sequence[str]) -> np.ndarray:
    """The preprocessed batch followed by each of its variants, for one forward pass: (1 + len(tta)) × N
    rows. Without ``tta`` the batch itself, untouched."""
    if not tta:
        return pixels
    return np.concatenate([pixels, *(TTA[name](pixels) for name in tta)])


def merge(probs: np.ndarray, tta: Sequence[str]) -> np.ndarray:
    """The rows of ``augment``'s batch back to one per image: the mean of its variants' probabilities (a
    linear probe averages its head's probabilities, not the features)."""
    if not tta:
        return probs
    return probs.reshape(1 + len(tta), -1, probs.shape[1]).mean(axis=0)
