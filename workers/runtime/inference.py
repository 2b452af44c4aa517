"""Synchronous inference on a few uploaded images (embed, ImageNet classify, and predict's backbone pass):
decode each file on its own so one bad file gets its own error while the others are still answered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InvalidInput, TLServeError
from workers.backbones import BackboneSpec

if TYPE_CHECKING:
    from workers.runtime.serving import Predictor


@dataclass
class DecodedBatch:
    names: list[str]  # every file, in request order
    pixels: np.ndarray | None  # the decodable ones, stacked (uint8 NHWC)
    index: list[int] = field(default_factory=list)  # position in ``names`` of each row of ``pixels``
    errors: dict[int, str] = field(default_factory=dict)  # position → why it could not be read


def decode_files(files: list[tuple[str, bytes]], spec: BackboneSpec) -> DecodedBatch:
    from workers.runtime.preprocess import load_rgb, stack_batch

    arrays, index, errors = [], [], {}
    for i, (_name, data) in enumerate(files):
        if not data:
            errors[i] = "empty file"
            continue
        try:
            arrays.append(load_rgb(data, spec.preprocessing))
            index.append(i)
        except TLServeError as exc:
            errors[i] = exc.message
        except Exception as exc:  # Pillow raises many types for corrupt data; the client hears which file
            errors[i] = f"could not decode the image: {type(exc).__name__}: {exc}"
    pixels = stack_batch(arrays) if arrays else None
    return DecodedBatch([n for n, _ in files], pixels, index, errors)


def check_files(files: list[tuple[str, bytes]], max_files: int) -> None:
    if not files:
        raise InvalidInput("no files: send one or more images in the 'files' field")
    if len(files) > max_files:
        raise InvalidInput(f"too many files ({len(files)}); at most {max_files} per request — use a batch job")


def per_file(batch: DecodedBatch, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results in request order: each decoded file's row, or its error."""
    by_position = dict(zip(batch.index, rows, strict=True))
    return [
        {"file": name, **by_position[i]} if i in by_position else {"file": name, "error": batch.errors[i]}
        for i, name in enumerate(batch.names)
    ]


def predict_images(predictor: Predictor, images: Sequence[bytes], tta: Sequence[str] = ()) -> np.ndarray:
    """Class probabilities (columns follow ``predictor.labels``) of encoded images, in order, with optional
    test-time augmentation: the predict route's computation without HTTP and the micro-batcher, for
    benchmarks and scripts. An image that cannot be decoded → ``InvalidInput`` naming its position."""
    from workers.runtime.serving import augment, check_tta, merge

    tta = check_tta(tta)
    batch = decode_files([(str(i), data) for i, data in enumerate(images)], predictor.spec)
    if batch.errors:
        i, why = next(iter(batch.errors.items()))
        raise InvalidInput(f"image {i}: {why}")
    if batch.pixels is None:
        return np.zeros((0, len(predictor.labels)), np.float32)
    return merge(predictor.predict_proba(augment(batch.pixels, tta)), tta)


def embed(
    tenant_id: str, backbone: str, files: list[tuple[str, bytes]], allow_random_weights: bool = False
) -> dict[str, Any]:
    from workers.plan import resolve_backbone
    from workers.runtime.serving import feature_engine

    spec, digest = resolve_backbone(backbone, allow_random_weights, tenant_id)
    batch = decode_files(files, spec)
    rows: list[dict[str, Any]] = []
    if batch.pixels is not None:
        engine = feature_engine(backbone, tenant_id, digest)
        rows = [{"embedding": v.tolist()} for v in engine.features(batch.pixels)]
    return {
        "backbone": spec.name,
        "feature_dim": spec.feature_dim,
        "weights_digest": digest,
        "embeddings": per_file(batch, rows),
    }


def classify_imagenet(backbone: str, files: list[tuple[str, bytes]], top_k: int) -> dict[str, Any]:
    from workers.backbones import get_backbone, weights_info
    from workers.runtime.engines import classify, get_engine

    spec = get_backbone(backbone)
    if "imagenet" not in spec.tags or not weights_info(spec).pretrained:
        raise InvalidInput(f"backbone {backbone!r} has no pretrained ImageNet weights here: nothing to classify with")
    batch = decode_files(files, spec)
    rows: list[dict[str, Any]] = []
    if batch.pixels is not None:
        engine = get_engine(spec.name, pretrained=True)
        rows = [
            {"label": top[0][0], "score": top[0][1], "top_k": [{"label": n, "score": s} for n, s in top]}
            for top in classify(engine, batch.pixels, top_k)
        ]
    return {"backbone": spec.name, "predictions": per_file(batch, rows)}
