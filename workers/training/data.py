"""The data side of fine-tuning (after Lightning's ``LightningDataModule``): samples in, decoded uint8
tensors, shuffled batches. Nothing here knows the model (``paths.py`` joins the two).

Images stay uint8 until the batch (4× less memory than float32); per-image random operations run on
uint8 on the CPU, normalisation runs per batch on the training device.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision.transforms import v2

from core.errors import InvalidInput
from workers.backbones.spec import Preprocessing
from workers.training.callbacks import Callbacks

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Samples:
    """Labelled images: encoded bytes (any format Pillow reads) or uint8 arrays (H×W or H×W×C, any size).
    ``labels`` index ``classes``; without ``classes`` they are named "0", "1", ..."""

    images: Sequence[bytes | np.ndarray]
    labels: Sequence[int]
    classes: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise InvalidInput(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


def class_names(train: Samples, val: Samples) -> list[str]:
    """The class list, checked against every label."""
    names = train.classes or val.classes
    labels = [int(v) for v in (*train.labels, *val.labels)]
    if names is None:
        names = [str(i) for i in range(max(labels, default=-1) + 1)]
    if len(names) < 2:
        raise InvalidInput(f"fine-tuning needs at least 2 classes; got {len(names)}")
    bad = sorted({v for v in labels if not 0 <= v < len(names)})
    if bad:
        raise InvalidInput(f"labels {bad[:5]} are outside 0..{len(names) - 1} ({len(names)} classes)")
    return [str(n) for n in names]


def _array_bytes(array: np.ndarray) -> bytes:
    """An array as PNG bytes, so that arrays and uploads take the same decode path (``load_rgb``)."""
    from PIL import Image

    if array.dtype != np.uint8:
        raise InvalidInput(f"image arrays must be uint8, got {array.dtype}")
    buf = io.BytesIO()
    Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array).save(
        buf, format="PNG", compress_level=0
    )
    return buf.getvalue()


def decode(samples: Samples, prep: Preprocessing, callbacks: Callbacks | None = None) -> torch.Tensor:
    """Every image resized, centre-cropped and stacked: uint8 N×C×S×S (S = input size)."""
    from workers.runtime.preprocess import load_rgb

    channels = 1 if prep.grayscale else 3
    out = torch.empty((len(samples), channels, prep.input_size, prep.input_size), dtype=torch.uint8)
    for i, image in enumerate(samples.images):
        if callbacks is not None and i % 64 == 0:
            callbacks.check_stop()
            callbacks.progress("decode", i, len(samples))
        raw = _array_bytes(image) if isinstance(image, np.ndarray) else image
        out[i] = torch.from_numpy(load_rgb(raw, prep)).permute(2, 0, 1)
    return out


class ImageBatches(Dataset[Batch]):
    """Indexed by a list of positions: returns a whole uint8 batch, random ops applied per image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ops: Sequence[v2.Transform] = ()) -> None:
        self.images = images
        self.labels = labels
        self.ops = v2.Compose(list(ops)) if ops else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: list[int]) -> Batch:  # type: ignore[override]
        rows = torch.as_tensor(index)
        batch = self.images.index_select(0, rows)  # ~10× faster than ``images[list]`` on image-sized rows
        if self.ops is not None:
            batch = torch.stack([self.ops(img) for img in batch])
        return batch, self.labels.index_select(0, rows)


def image_loader(
    data: ImageBatches,
    batch_size: int,
    *,
    generator: torch.Generator | None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader[Batch]:
    """Shuffled batches when a generator is given (its state decides the order), in order otherwise."""
    sampler = RandomSampler(data, generator=generator) if generator is not None else SequentialSampler(data)
    return DataLoader(  # its own generator even in order: DataLoader draws a worker seed per epoch
        data,
        sampler=BatchSampler(sampler, batch_size, drop_last=False),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator or torch.Generator(),
    )


def tensor_batches(
    inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator | None
) -> Iterator[Batch]:
    """Batches of cached activations: a permutation from (CPU) ``generator``, or in order without one."""
    n = len(labels)
    if generator is None:
        for start in range(0, n, batch_size):
            yield inputs[start : start + batch_size], labels[start : start + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(inputs.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield inputs.index_select(0, idx), labels.index_select(0, idx)
