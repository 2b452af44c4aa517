"""Data augmentation and normalisation with torchvision ``transforms.v2``.

Images enter as uint8 C×H×W tensors already resized and centre-cropped to the backbone's input size
(``workers.preprocess.load_rgb``). The random geometric and colour operations run per image on uint8 (cheap,
on the CPU); conversion to float, PCA lighting and normalisation run per batch, on the training device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from workers.backbones.spec import Preprocessing

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}


def image_ops(names: Sequence[str], prep: Preprocessing) -> list[v2.Transform]:
    """The per-image uint8 operations for ``names`` (geometric first, then colour; ``pca_color`` is a batch
    operation, see :func:`batch_transform`). Strengths suit fine-tuning: the object stays recognisable."""
    size = prep.input_size
    table: dict[str, v2.Transform] = {
        "hflip": v2.RandomHorizontalFlip(0.5),
        "vflip": v2.RandomVerticalFlip(0.5),
        "rotate": v2.RandomRotation(15, interpolation=InterpolationMode.BILINEAR),
        "crop": v2.RandomResizedCrop(
            size, scale=(0.5, 1.0), interpolation=_INTERPOLATION[prep.interpolation], antialias=True
        ),
        "shear": v2.RandomAffine(degrees=0, shear=(-10, 10, -10, 10), interpolation=InterpolationMode.BILINEAR),
        "shift": v2.RandomAffine(degrees=0, translate=(0.1, 0.1)),
        "warp": v2.RandomApply([v2.ElasticTransform(alpha=30.0, sigma=max(2.0, size / 40))], p=0.5),
        "color": v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
    }
    order = ("hflip", "vflip", "rotate", "crop", "shear", "shift", "warp", "color")
    return [table[name] for name in order if name in names]


def rgb_pca(images: torch.Tensor, *, max_pixels: int = 200_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of the per-pixel channel covariance of uint8 N×C×H×W ``images`` (scaled to
    [0, 1]), from a seeded sample of at most ``max_pixels`` pixels. Returns (eigvals descending (C,),
    eigvecs as columns (C, C)): the AlexNet "lighting" statistics, computed once per dataset version."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty N×C×H×W batch, got shape {tuple(images.shape)}")
    channels = images.shape[1]
    pixels = images.permute(0, 2, 3, 1).reshape(-1, channels)
    if pixels.shape[0] > max_pixels:
        gen = torch.Generator().manual_seed(seed)
        pixels = pixels[torch.randperm(pixels.shape[0], generator=gen)[:max_pixels]]
    pixels = pixels.to(torch.float64) / 255.0
    eigvals, eigvecs = torch.linalg.eigh(torch.cov(pixels.T).reshape(channels, channels))
    order = torch.argsort(eigvals, descending=True)
    return eigvals[order].clamp_min(0).float(), eigvecs[:, order].float()


class PCALighting(v2.Transform):
    """AlexNet's colour augmentation: add ``eigvecs @ (alpha * eigvals)`` to every pixel, alpha ~ N(0, σ²)
    drawn per image (also per image of a batch, unlike v2's one-draw-per-call). Float images in [0, 1]."""

    def __init__(self, eigvals: torch.Tensor, eigvecs: torch.Tensor, alphastd: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("eigvals", torch.as_tensor(eigvals, dtype=torch.float32))
        self.register_buffer("eigvecs", torch.as_tensor(eigvecs, dtype=torch.float32))
        self.alphastd = alphastd

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        shape = flat_inputs[0].shape
        batch = shape[:-3]
        alpha = torch.randn((*batch, self.eigvals.numel())) * self.alphastd
        noise = (alpha * self.eigvals) @ self.eigvecs.T  # (..., C)
        return {"noise": noise}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not torch.is_floating_point(inpt):
            raise TypeError("PCALighting needs float images in [0, 1]; put it after ToDtype(scale=True)")
        noise = params["noise"].to(inpt.device, inpt.dtype)
        return (inpt + noise[..., :, None, None]).clamp_(0.0, 1.0)


def normalize(prep: Preprocessing, channels: int) -> v2.Normalize:
    """The backbone's mean/std, for the number of channels it takes."""
    return v2.Normalize(mean=list(prep.mean[:channels]), std=list(prep.std[:channels]))


def resize_crop(prep: Preprocessing) -> v2.Compose:
    """Resize the shorter side then centre-crop, as the spec says (a no-op on images already at size)."""
    return v2.Compose(
        [
            v2.Resize(prep.resize_size, interpolation=_INTERPOLATION[prep.interpolation], antialias=True),
            v2.CenterCrop(prep.input_size),
        ]
    )


class ScaleNormalize(v2.Transform):
    """``ToDtype(float32, scale=True)`` then ``Normalize(mean, std)`` in one multiply-add: on a 224-px batch
    it halves the cost (two passes over the data instead of four, one float allocation instead of two)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t))[:, None, None])
        self.register_buffer("shift", (-torch.tensor(mean, dtype=torch.float32) / std_t)[:, None, None])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.dtype != torch.uint8:
            raise TypeError(f"ScaleNormalize takes uint8 images, got {inpt.dtype}")
        return inpt.to(torch.float32).mul_(self.scale.to(inpt.device)).add_(self.shift.to(inpt.device))


def batch_transform(
    prep: Preprocessing, *, train: bool, pca: tuple[torch.Tensor, torch.Tensor] | None = None
) -> v2.Compose:
    """uint8 (N×)C×H×W → normalised float32; in training, PCA lighting (when ``pca`` is given) first."""
    channels = 1 if prep.grayscale else 3
    if not (train and pca is not None):
        return v2.Compose([ScaleNormalize(prep.mean[:channels], prep.std[:channels])])
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), PCALighting(*pca), normalize(prep, channels)])


def train_transform(
    prep: Preprocessing, names: Sequence[str], pca: tuple[torch.Tensor, torch.Tensor] | None = None
) -> v2.Compose:
    """The whole per-image training pipeline (uint8 image of any size → normalised float32)."""
    if "pca_color" in names and pca is None:
        raise ValueError("pca_color needs the dataset's rgb_pca statistics")
    ops = [resize_crop(prep), *image_ops(names, prep)]
    return v2.Compose([*ops, batch_transform(prep, train=True, pca=pca if "pca_color" in names else None)])


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """Resize + centre-crop + normalise: what evaluation and serving see."""
    return v2.Compose([resize_crop(prep), batch_transform(prep, train=False)])
