"""Test-time augmentation (``serving.augment``/``merge``, ``inference.predict_images``): a real LeNet-5 engine
(random weights) behind a fitted scikit-learn head and behind its own softmax; the averaged probabilities
equal the mean of predicting the original and the mirrored PNG one by one."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from sklearn.linear_model import LogisticRegression

from classifiers.scores import softmax
from core.errors import InvalidInput
from core.sample_data import iter_labelled_pngs
from workers.backbones import get_backbone
from workers.runtime.inference import predict_images
from workers.runtime.serving import Predictor, augment, check_tta, merge

pytestmark = pytest.mark.slow


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def images() -> list[bytes]:
    """Three 32×32 digits: LeNet-5's size, so preprocessing keeps every pixel and a mirrored PNG is exactly
    the mirrored preprocessed array."""
    return [data for _, _, data in list(iter_labelled_pngs("digits", 1, seed=3, side=32))[:3]]


def _mirrored(data: bytes, flip=ImageOps.mirror) -> bytes:
    return _png(flip(Image.open(io.BytesIO(data))))


class _Softmax:
    """A fine-tuned network's serving face: its logits through softmax (as ``FinetunedEngine``)."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        return softmax(self.engine.logits(pixels))


@pytest.fixture(params=["linear_probe", "finetune"])
def predictor(request: pytest.FixtureRequest, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Predictor]:
    monkeypatch.setenv("TLSERVE_DEVICE", "cpu")
    from workers.runtime.engines import get_engine

    spec = get_backbone("lenet5")
    engine = get_engine("lenet5", pretrained=False)
    labels = [str(i) for i in range(10)]
    if request.param == "finetune":
        yield Predictor("m", spec, labels, "finetune", _Softmax(engine), None)
        return
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (60, 32, 32, 1), dtype=np.uint8)
    head = LogisticRegression(max_iter=500).fit(engine.features(pixels), np.arange(60) % 10)
    yield Predictor("m", spec, labels, "linear_probe", engine, head)


def test_hflip_averages_the_probabilities_of_the_image_and_its_mirror(predictor: Predictor, images) -> None:
    plain = predict_images(predictor, images)
    mirrored = predict_images(predictor, [_mirrored(d) for d in images])
    averaged = predict_images(predictor, images, ["hflip"])
    assert averaged.shape == plain.shape == (3, 10)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(averaged, plain, atol=1e-4)  # the mirror did change something
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0, atol=1e-5)


def test_several_augmentations_average_all_variants(predictor: Predictor, images) -> None:
    plain = predict_images(predictor, images)
    h = predict_images(predictor, [_mirrored(d) for d in images])
    v = predict_images(predictor, [_mirrored(d, ImageOps.flip) for d in images])
    np.testing.assert_allclose(predict_images(predictor, images, ["hflip", "vflip"]), (plain + h + v) / 3, atol=1e-6)


def test_no_tta_is_the_plain_batch_untouched() -> None:
    pixels = np.arange(2 * 3 * 4 * 1, dtype=np.uint8).reshape(2, 3, 4, 1)
    assert augment(pixels, []) is pixels
    probs = np.ones((2, 5))
    assert merge(probs, []) is probs
    doubled = augment(pixels, ["hflip"])
    assert doubled.shape == (4, 3, 4, 1)
    np.testing.assert_array_equal(doubled[2:], pixels[:, :, ::-1])
    np.testing.assert_array_equal(merge(np.arange(8.0).reshape(4, 2), ["hflip"]), [[2.0, 3.0], [4.0, 5.0]])


def test_unknown_augmentations_are_refused_with_the_allowed_values() -> None:
    assert check_tta(["hflip", "vflip", "hflip"]) == ["hflip", "vflip"]
    with pytest.raises(InvalidInput, match=r"'rotate'.*allowed values are hflip, vflip"):
        check_tta(["hflip", "rotate"])


def test_an_undecodable_image_is_named_by_its_position(predictor: Predictor, images) -> None:
    with pytest.raises(InvalidInput, match="image 1"):
        predict_images(predictor, [images[0], b"not an image"], ["hflip"])
