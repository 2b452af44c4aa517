"""Factories for the fine-tuning tests: real images (scikit-learn's digits) and backbone specs shrunk to a
small input size so that ImageNet architectures train in seconds on a CPU."""

from __future__ import annotations

import dataclasses

import numpy as np

from core.sample_data import digits, encode_png
from workers.backbones import get_backbone
from workers.backbones.spec import BackboneSpec
from workers.training import Samples

DIGIT_CLASSES = [str(i) for i in range(10)]


def small_spec(name: str, size: int = 64) -> BackboneSpec:
    """A registered backbone with its input size reduced (architecture and mean/std unchanged)."""
    spec = get_backbone(name)
    prep = dataclasses.replace(spec.preprocessing, input_size=size, resize_size=size)
    return dataclasses.replace(spec, preprocessing=prep)


def digit_split(
    train_per_class: int, val_per_class: int, seed: int = 0, *, as_png: bool = False
) -> tuple[Samples, Samples]:
    """Disjoint, stratified train and val sets of scikit-learn's real handwritten digits."""
    images, labels = digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    train_idx: list[int] = []
    val_idx: list[int] = []
    for c in range(10):
        of_class = order[labels[order] == c]
        train_idx += of_class[:train_per_class].tolist()
        val_idx += of_class[train_per_class : train_per_class + val_per_class].tolist()

    def samples(idx: list[int]) -> Samples:
        pics = [encode_png(images[i]) if as_png else images[i] for i in idx]
        return Samples(pics, [int(labels[i]) for i in idx], classes=DIGIT_CLASSES)

    return samples(train_idx), samples(val_idx)
