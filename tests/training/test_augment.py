from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from tests.training.factories import small_spec
from workers.backbones import get_backbone
from workers.runtime.preprocess import load_rgb
from workers.training.augment import (
    PCALighting,
    batch_transform,
    eval_transform,
    image_ops,
    rgb_pca,
    train_transform,
)
from workers.training.config import AUGMENTATIONS
from workers.training.data import Samples, decode


@pytest.fixture(scope="module")
def photo_batch(photos: list[np.ndarray]) -> torch.Tensor:
    """The scikit-image photos decoded for a 64-px backbone: uint8 N×3×64×64."""
    prep = small_spec("resnet18").preprocessing
    return decode(Samples(photos, [0, 1, 2]), prep)


@pytest.mark.parametrize("name", [a for a in AUGMENTATIONS if a != "pca_color"])
@pytest.mark.parametrize("backbone", ["resnet18", "lenet5"])
def test_each_image_op_keeps_shape_and_dtype(name: str, backbone: str, photo_batch: torch.Tensor) -> None:
    prep = small_spec(backbone, 64 if backbone == "resnet18" else 32).preprocessing
    images = photo_batch if not prep.grayscale else photo_batch.float().mean(1, keepdim=True).to(torch.uint8)
    images = images[:, :, : prep.input_size, : prep.input_size]
    (op,) = image_ops([name], prep)
    torch.manual_seed(0)
    changed = False
    for img in images:
        for _ in range(4):
            out = op(img)
            assert out.shape == img.shape and out.dtype == torch.uint8
            changed |= not torch.equal(out, img)
    assert changed, f"{name} never changed a real photo"


def test_full_train_and_eval_pipelines_give_normalised_float(photos: list[np.ndarray]) -> None:
    prep = get_backbone("resnet18").preprocessing
    pca = rgb_pca(torch.from_numpy(photos[1]).permute(2, 0, 1)[None])
    train = train_transform(prep, AUGMENTATIONS, pca)
    evaluate = eval_transform(prep)
    for photo in photos:  # full-size photos: the pipelines resize and crop them themselves
        img = torch.from_numpy(photo).permute(2, 0, 1)
        for pipe in (train, evaluate):
            out = pipe(img)
            assert out.shape == (3, 224, 224) and out.dtype == torch.float32
            assert -3.0 < out.mean() < 3.0
    # eval matches the serving decode (Pillow resize + centre crop) up to resampling differences
    ref = batch_transform(prep, train=False)(torch.from_numpy(load_rgb(_png(photos[2]), prep)).permute(2, 0, 1))
    assert (evaluate(torch.from_numpy(photos[2]).permute(2, 0, 1)) - ref).abs().mean() < 0.05


def _png(array: np.ndarray) -> bytes:
    from core.sample_data import encode_png

    return encode_png(array)


def test_rgb_pca_of_real_photos(photo_batch: torch.Tensor) -> None:
    eigvals, eigvecs = rgb_pca(photo_batch)
    assert eigvals.shape == (3,) and eigvecs.shape == (3, 3)
    assert torch.all(eigvals[:-1] >= eigvals[1:]) and eigvals[-1] >= 0
    torch.testing.assert_close(eigvecs.T @ eigvecs, torch.eye(3), atol=1e-5, rtol=0)
    # natural images: the dominant direction is brightness, all three channels of one sign, and carries most
    # of the variance (AlexNet's ImageNet values: 0.2175, 0.0188, 0.0045)
    top = eigvecs[:, 0] * torch.sign(eigvecs[0, 0])
    assert torch.all(top > 0.3)
    assert eigvals[0] > 5 * eigvals[1]
    # it is the covariance's eigen-decomposition: C v = λ v
    pixels = photo_batch.permute(0, 2, 3, 1).reshape(-1, 3).double() / 255
    cov = torch.cov(pixels.T).float()
    torch.testing.assert_close(cov @ eigvecs, eigvecs * eigvals, atol=1e-5, rtol=1e-3)


def test_pca_lighting_noise_follows_the_eigenvectors(photo_batch: torch.Tensor) -> None:
    eigvals, eigvecs = rgb_pca(photo_batch)
    lighting = PCALighting(eigvals, eigvecs, alphastd=0.1)
    gray = torch.full((4000, 3, 2, 2), 0.5)  # a batch: one noise draw per image
    torch.manual_seed(0)
    noise = (lighting(gray) - gray)[:, :, 0, 0]
    assert torch.all((lighting(gray) - gray).std(dim=(2, 3)) < 1e-6)  # one colour shift per image
    assert noise.std(0).min() > 0 and not torch.allclose(noise[0], noise[1])
    # the noise covariance is eigvecs diag((0.1 λ)²) eigvecsᵀ: its top eigenvector is the data's top one
    expected = (eigvecs * (0.1 * eigvals) ** 2) @ eigvecs.T
    torch.testing.assert_close(torch.cov(noise.T), expected, atol=2e-6, rtol=0.1)
    _, vecs = torch.linalg.eigh(torch.cov(noise.T))
    assert abs(float(vecs[:, -1] @ eigvecs[:, 0])) > 0.99


def test_pca_lighting_needs_float_images() -> None:
    lighting = PCALighting(torch.ones(3), torch.eye(3))
    with pytest.raises(TypeError, match="float images"):
        lighting(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_pca_lighting_on_grayscale_digits() -> None:
    from tests.training.factories import digit_split

    prep = get_backbone("lenet5").preprocessing
    train, _ = digit_split(20, 0)
    images = decode(train, prep)
    eigvals, eigvecs = rgb_pca(images)
    assert eigvals.shape == (1,) and eigvecs.shape == (1, 1) and eigvals[0] > 0
    out = batch_transform(prep, train=True, pca=(eigvals, eigvecs))(images)
    assert out.shape == images.shape and out.dtype == torch.float32


def test_fused_normalisation_matches_torchvision(photo_batch: torch.Tensor) -> None:
    prep = get_backbone("resnet18").preprocessing
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(prep.mean, prep.std)])
    torch.testing.assert_close(batch_transform(prep, train=False)(photo_batch), reference(photo_batch))
