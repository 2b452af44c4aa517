"""Checks a request against what the workers can run, before anything is stored: backbone names and
weights (the registry), a fine-tuned model used as a backbone, head and fine-tune hyperparameters.

Torch-free: the API process imports it to answer a bad request with a 422 at once instead of failing in a job.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from importlib.metadata import version as pkg_version
from typing import Any

from core.db import session_scope
from core.errors import InvalidInput, NotFound
from core.features import MODEL_PREFIX, Extractor
from core.status import ResourceStatus
from core.tables import Model
from workers.backbones import BackboneSpec, get_backbone, weights_info
from workers.runtime.engines import ENGINE_VERSION


def engine_tag(queue: str) -> str:
    """The engine a queue's workers run (cpu: ONNX Runtime; gpu: torch on CUDA), for cache keys."""
    if queue == "gpu":
        return f"torch-{pkg_version('torch')}-cuda-x{ENGINE_VERSION}"
    return f"onnxruntime-{pkg_version('onnxruntime')}-x{ENGINE_VERSION}"


def resolve_backbone(name: str, allow_random_weights: bool, tenant_id: str | None = None) -> tuple[BackboneSpec, str]:
    """The spec and weights digest to extract with; refuses random weights unless explicitly allowed.
    ``model:<id>`` names a fine-tuned model of the tenant: its pooled pre-logits are the features."""
    if name.startswith(MODEL_PREFIX):
        return _finetuned_backbone(name.removeprefix(MODEL_PREFIX), tenant_id)
    try:
        spec = get_backbone(name)
    except NotFound as exc:
        raise InvalidInput(f"{exc.message}; or {MODEL_PREFIX}<id> of a fine-tuned model") from exc
    info = weights_info(spec)
    if not info.pretrained and not allow_random_weights:
        where = f" (put {spec.weights.filename} in TLSERVE_WEIGHTS_DIR)" if spec.weights.filename else ""
        raise InvalidInput(
            f"backbone {name!r} has no pretrained weights here{where}; features of random weights are rarely "
            'useful: pass "allow_random_weights": true to extract them anyway'
        )
    return spec, info.digest


def _finetuned_backbone(model_id: str, tenant_id: str | None) -> tuple[BackboneSpec, str]:
    with session_scope() as s:
        model = s.get(Model, model_id)
        if model is None or tenant_id is None or model.tenant_id != tenant_id:
            raise InvalidInput(f"backbone {MODEL_PREFIX}{model_id}: no such model")
        if model.strategy != "finetune" or model.status != ResourceStatus.READY:
            raise InvalidInput(
                f"backbone {MODEL_PREFIX}{model_id}: only a fine-tuned model that is ready can serve as a backbone"
            )
        return get_backbone(model.backbone), model.lineage["finetuned_digest"]


def extractor(name: str, allow_random_weights: bool, tenant_id: str, queue: str = "cpu") -> Extractor:
    """What a feature set of backbone ``name`` is extracted with, as the plain values of its cache key."""
    spec, digest = resolve_backbone(name, allow_random_weights, tenant_id)
    return Extractor(
        backbone=spec.name,
        weights_digest=digest,
        preprocessing=spec.preprocessing.key(),
        layer=spec.feature_layer,
        engine=engine_tag(queue),
        feature_dim=spec.feature_dim,
    )


def head_config(head: dict[str, Any] | None, seed: int = 0) -> Any:
    """A ``HeadConfig`` from a request's ``head`` (a 422 that names the bad field)."""
    from classifiers.heads import HeadConfig

    head = dict(head or {})
    known = {f.name for f in fields(HeadConfig)}
    unknown = sorted(set(head) - known)
    if unknown:
        raise InvalidInput(f"unknown head field(s) {unknown}; known: {sorted(known)}")
    head.setdefault("seed", seed)
    if "C_grid" in head:
        head["C_grid"] = tuple(head["C_grid"])
    try:
        return HeadConfig(**head)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"head: {exc}") from exc


def probe_params(
    backbone: str, head: dict[str, Any], seed: int, allow_random_weights: bool, tenant_id: str
) -> tuple[BackboneSpec, str, dict[str, Any]]:
    spec, digest = resolve_backbone(backbone, allow_random_weights, tenant_id)
    head_config(head, seed)  # validated now, so a bad request fails at once rather than in the job
    return spec, digest, {"head": head, "seed": seed, "allow_random_weights": allow_random_weights}


def finetune_params(
    backbone: str, finetune: dict[str, Any], seed: int, allow_random_weights: bool
) -> tuple[BackboneSpec, str, dict[str, Any]]:
    """Validate a fine-tune request: the backbone (random weights are fine for training from scratch only
    when asked, or for ``lenet5`` which has none), and the ``finetune`` body."""
    from workers.training.config import FinetuneConfig

    try:
        spec = get_backbone(backbone)
    except NotFound as exc:
        raise InvalidInput(exc.message) from exc
    info = weights_info(spec)
    if not info.pretrained and spec.weights.kind != "none" and not allow_random_weights:
        raise InvalidInput(
            f"backbone {backbone!r} has no pretrained weights here; fine-tuning random weights is training from "
            'scratch: pass "allow_random_weights": true to do it anyway'
        )
    cfg = FinetuneConfig.from_dict({"seed": seed, **finetune}, num_stages=spec.num_stages or None)
    params = {
        "finetune": asdict(cfg) | {"augment": list(cfg.augment)},
        "seed": seed,
        "allow_random_weights": allow_random_weights,
    }
    return spec, info.digest, params


def training_params(
    strategy: str,
    backbone: str,
    *,
    head: dict[str, Any],
    finetune: dict[str, Any],
    seed: int,
    allow_random_weights: bool,
    tenant_id: str,
) -> tuple[BackboneSpec, str, dict[str, Any]]:
    """(spec, weights digest, the model's stored params) for a training request of either strategy."""
    if strategy == "linear_probe":
        return probe_params(backbone, head, seed, allow_random_weights, tenant_id)
    if head:
        raise InvalidInput("'head' is for linear probes; a fine-tune's head is set in 'finetune' (dropout, init)")
    return finetune_params(backbone, finetune, seed, allow_random_weights)
