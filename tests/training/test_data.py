"""Streaming the fine-tuning data: images read and decoded a batch at a time, a bounded decode-ahead pool, a
bounded cache of decoded images, and the same training run whether the images sit in memory or in storage."""

from __future__ import annotations

import threading

import pytest
import torch

from core.errors import InvalidInput
from tests.training.factories import digit_split
from workers.backbones import get_backbone
from workers.training import Callbacks, FinetuneConfig, Samples, finetune
from workers.training.data import DecodedImages, StoredImages, decode, in_order, prefetch, sampled_rgb_pca

LENET = get_backbone("lenet5")
PREP = LENET.preprocessing
IMAGE_BYTES = 1 * 32 * 32  # one decoded LeNet image: uint8 1×32×32


def _stored(samples: Samples) -> tuple[Samples, list[str]]:
    """The same samples with their images behind a loader that records every read (as storage would be)."""
    blobs = {f"img/{i}.png": raw for i, raw in enumerate(samples.images)}
    reads: list[str] = []
    lock = threading.Lock()

    def load(key: str) -> bytes:
        with lock:
            reads.append(key)
        return blobs[key]  # type: ignore[return-value]

    return Samples(StoredImages(list(blobs), load), samples.labels, samples.classes), reads


def test_the_decoded_cache_never_holds_more_than_its_budget() -> None:
    train, _ = digit_split(5, 0, as_png=True)  # 50 images
    images = DecodedImages(train.images, PREP, cache_bytes=12 * IMAGE_BYTES + IMAGE_BYTES // 2)
    expected = decode(train, PREP)
    for _ in range(2):
        for rows in in_order(len(images), 8):
            assert torch.equal(images.batch(rows), expected[rows])
            assert images.cached_bytes <= 12.5 * IMAGE_BYTES
    assert images.cached_bytes == 12 * IMAGE_BYTES
    assert images.decodes == 50 + 38  # the 12 kept are decoded once, the other 38 on every pass


def test_a_budget_that_holds_everything_decodes_each_image_once() -> None:
    train, _ = digit_split(3, 0)
    images = DecodedImages(train.images, PREP, cache_bytes=2**20)
    for _ in range(3):
        images.batch(range(len(images)))
    assert images.decodes == len(images) == 30


def _decode_threads() -> int:
    return sum(t.name.startswith("decode") for t in threading.enumerate())


@pytest.mark.parametrize("ahead", [0, 2])
def test_prefetch_decodes_a_bounded_number_of_batches_ahead(ahead: int) -> None:
    train, _ = digit_split(10, 0, as_png=True)  # 100 images, 10 batches of 10
    lazy, reads = _stored(train)
    images = DecodedImages(lazy.images, PREP, cache_bytes=0)
    orders = in_order(len(images), 10)
    seen = []
    for step, (rows, batch) in enumerate(prefetch(orders, images, threads=3, ahead=ahead)):
        assert rows == orders[step] and batch.shape == (10, 1, 32, 32)
        assert len(reads) <= 10 * (step + 1 + ahead)  # nothing beyond `ahead` batches was even read
        assert _decode_threads() <= 3
        seen.append(batch)
    assert torch.equal(torch.cat(seen), decode(train, PREP))
    assert len(reads) == 100 and _decode_threads() == 0  # each image read once, the pool is gone


def test_leaving_early_stops_the_reads() -> None:
    train, _ = digit_split(10, 0, as_png=True)
    lazy, reads = _stored(train)
    images = DecodedImages(lazy.images, PREP, cache_bytes=0)
    batches = prefetch(in_order(len(images), 10), images, threads=2, ahead=2)
    next(batches)
    batches.close()  # what a cancelled epoch does to its batches
    assert len(reads) <= 30 and _decode_threads() == 0


def test_a_bad_image_fails_the_batch_that_holds_it() -> None:
    train, _ = digit_split(2, 0, as_png=True)
    broken = Samples([*train.images[:-1], b"not an image"], train.labels, train.classes)
    images = DecodedImages(broken.images, PREP, cache_bytes=0)
    batches = prefetch(in_order(len(images), 5), images, threads=2)
    assert len([next(batches) for _ in range(3)]) == 3
    with pytest.raises(InvalidInput, match="not a readable image"):
        next(batches)


def test_pca_statistics_read_a_bounded_seeded_sample() -> None:
    train, _ = digit_split(10, 0, as_png=True)
    lazy, reads = _stored(train)
    first = sampled_rgb_pca(DecodedImages(lazy.images, PREP, 0), seed=3, threads=2, max_images=20)
    assert len(set(reads)) == len(reads) == 20
    again = sampled_rgb_pca(DecodedImages(lazy.images, PREP, 0), seed=3, threads=2, max_images=20)
    assert sorted(reads[:20]) == sorted(reads[20:])  # the same images (read in any order by the threads)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


CONFIGS: list[tuple[str, FinetuneConfig]] = [
    ("cached", FinetuneConfig(epochs=2, unfreeze="last:1", lr=3e-3, batch_size=16, early_stopping_patience=0)),
    (
        "augmented",
        FinetuneConfig(
            epochs=2,
            unfreeze="gradual",
            augment=("rotate", "crop", "pca_color"),
            lr=0.02,
            dropout=0.3,
            batch_size=16,
            early_stopping_patience=0,
        ),
    ),
]


@pytest.mark.parametrize(("name", "cfg"), CONFIGS, ids=[n for n, _ in CONFIGS])
def test_a_fine_tune_from_storage_equals_one_from_memory(name: str, cfg: FinetuneConfig) -> None:
    """Images read from storage and decoded again every epoch (no cache) train exactly the weights that
    in-memory images with room for all of them decoded do, for the same seed."""
    train, val = digit_split(8, 3, as_png=True)
    lazy_train, reads = _stored(train)
    lazy_val, _ = _stored(val)
    progress: list[str] = []
    in_memory = finetune(LENET, train, val, cfg)
    callbacks = Callbacks(on_progress=lambda stage, *_: progress.append(stage))
    streamed = finetune(LENET, lazy_train, lazy_val, cfg, decode_threads=3, decoded_cache_bytes=0, callbacks=callbacks)
    assert streamed.data_path == in_memory.data_path == name
    assert streamed.history[-1]["val_loss"] == in_memory.history[-1]["val_loss"]
    for key, value in in_memory.state_dict.items():
        assert torch.equal(value, streamed.state_dict[key]), key
    assert len(reads) > len(train)  # read again, not held
    assert "train" in progress and "val" in progress
