"""The two data paths of fine-tuning, chosen explicitly (``FinetuneConfig.data_path``):

- :class:`CachedPath` runs the frozen prefix ONCE over the un-augmented train and val images (streamed: decoded
  a batch at a time) and keeps its output — the pooled features when only the head trains, else the
  activation at the cut — so every epoch only runs the trainable tail on tensors (DESIGN: "run the base
  once and save the output"). Flips are a finite set of images: with ``hflip``/``vflip`` it runs the prefix
  once per flip variant of the training images (2 or 4) and every epoch draws each image's variant at
  random — the distribution of the augmented path's random flips at the cost of one pass per variant.
- :class:`AugmentedPath` re-runs the frozen prefix (without autograd) every batch on freshly augmented
  images (DESIGN: "re-run the frozen base every epoch so that data augmentation can be used"), decoded per
  batch every epoch (or taken from the decoded-image cache while it has room).

Both yield device batches ready for their ``forward``, which gives logits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from workers.backbones.network import BackboneModel
from workers.backbones.spec import Preprocessing
from workers.training.augment import batch_transform, image_ops
from workers.training.callbacks import Callbacks
from workers.training.config import FLIP_AXES
from workers.training.cut import Split
from workers.training.data import (
    DECODE_THREADS,
    Batch,
    DecodedImages,
    ImageBatches,
    batch_orders,
    in_order,
    tensor_batches,
)
from workers.training.device import Precision

CACHE_ON_DEVICE_BYTES = 2 * 2**30  # cached activations up to this size live on the GPU, bigger ones in pinned RAM


class DataPath(Protocol):
    name: str

    def set_cut(self, cut: int) -> None: ...

    def num_batches(self, train: bool) -> int: ...

    def batches(self, train: bool) -> Iterator[Batch]: ...

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ImageData:
    """Both splits' images (decoded on demand) and int64 labels, and the size of the decode pool."""

    train_x: DecodedImages
    train_y: torch.Tensor
    val_x: DecodedImages
    val_y: torch.Tensor
    threads: int = DECODE_THREADS


class AugmentedPath:
    name = "augmented"

    def __init__(
        self,
        model: BackboneModel,
        data: ImageData,
        prep: Preprocessing,
        *,
        augment: tuple[str, ...],
        pca: tuple[torch.Tensor, torch.Tensor] | None,
        batch_size: int,
        generator: torch.Generator,
        precision: Precision,
    ) -> None:
        self.model, self.precision, self.batch_size = model, precision, batch_size
        pin, threads = precision.cuda, data.threads
        self.loaders = {
            True: ImageBatches(
                data.train_x,
                data.train_y,
                batch_orders(len(data.train_y), batch_size, generator=generator),
                ops=image_ops(augment, prep),
                threads=threads,
                pin_memory=pin,
            ),
            False: ImageBatches(
                data.val_x,
                data.val_y,
                in_order(len(data.val_y), 2 * batch_size),
                threads=threads,
                pin_memory=pin,
            ),
        }
        use_pca = pca if "pca_color" in augment else None
        self.transforms = {
            True: batch_transform(prep, train=True, pca=use_pca),
            False: batch_transform(prep, train=False),
        }
        self.split = Split(model, len(model.stages()))

    def set_cut(self, cut: int) -> None:
        if cut != self.split.cut:
            self.split = Split(self.model, cut)

    def num_batches(self, train: bool) -> int:
        return len(self.loaders[train])

    def batches(self, train: bool) -> Iterator[Batch]:
        transform = self.transforms[train]
        for images, labels in self.loaders[train]:
            x = transform(self.precision.to_device(images))
            yield x, labels.to(self.precision.device, non_blocking=self.precision.cuda)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the frozen prefix needs no graph
            x = self.split.prefix(x)
        return self.split.tail(x)


class CachedPath:
    name = "cached"

    def __init__(
        self,
        model: BackboneModel,
        data: ImageData,
        prep: Preprocessing,
        *,
        cut: int,
        batch_size: int,
        generator: torch.Generator,
        precision: Precision,
        callbacks: Callbacks,
        flips: tuple[str, ...] = (),
        known: torch.Tensor | None = None,
    ) -> None:
        """``known``: the prefix's outputs, per variant, for the first training images (another run's
        ``train_variants`` with the same frozen prefix and flips): only the rest are run."""
        self.split = Split(model, cut)
        self.precision, self.batch_size, self.generator = precision, batch_size, generator
        self.transform = batch_transform(prep, train=False)
        model.eval()
        axes = [FLIP_AXES[name] for name in flips]  # KeyError: not a flip; the config allows no other augmentation
        variants = [[a for i, a in enumerate(axes) if mask >> i & 1] for mask in range(2 ** len(axes))]
        # (variants, N, ...): variant 0 is the images as they are, the others every combination of the flips
        start = 0 if known is None else known.shape[1]
        computed = [self._run_prefix(data.train_x, data.threads, callbacks, flip, start) for flip in variants]
        if known is not None:
            computed = [torch.cat([known[v].to(c.device), c]) if len(c) else known[v] for v, c in enumerate(computed)]
        self.train_variants = torch.stack(computed)
        self.inputs = {True: self.train_variants[0], False: self._run_prefix(data.val_x, data.threads, callbacks)}
        self.labels = {True: data.train_y.to(self.inputs[True].device), False: data.val_y.to(self.inputs[False].device)}

    @torch.no_grad()
    def _run_prefix(
        self, images: DecodedImages, threads: int, callbacks: Callbacks, flip: list[int] | None = None, start: int = 0
    ) -> torch.Tensor:
        """The one pass of the frozen prefix (eval mode, in order) over one split from image ``start`` on, its
        images flipped along ``flip``'s axes."""
        orders = [[start + i for i in rows] for rows in in_order(len(images) - start, 2 * self.batch_size)]
        labels = torch.zeros(len(images), dtype=torch.long)
        loader = ImageBatches(images, labels, orders, threads=threads, pin_memory=self.precision.cuda)
        outputs = []
        for done, (batch, _) in enumerate(loader, 1):
            callbacks.check_stop()
            if flip:
                batch = batch.flip(flip)
            with self.precision.autocast():
                outputs.append(self.split.prefix(self.transform(self.precision.to_device(batch))).float())
            callbacks.progress("cache", done, len(loader))
        if not outputs:
            return torch.empty(0)
        return self._place(torch.cat([o.cpu() for o in outputs]))

    def _place(self, t: torch.Tensor) -> torch.Tensor:
        """On the GPU when it fits comfortably, else pinned for asynchronous copies; as is on a CPU."""
        if not self.precision.cuda:
            return t
        if t.numel() * t.element_size() <= CACHE_ON_DEVICE_BYTES:
            return t.to(self.precision.device)
        return t.pin_memory()

    def set_cut(self, cut: int) -> None:
        if cut != self.split.cut:
            raise ValueError("the cached path has a fixed cut; use the augmented path for gradual unfreezing")

    def _size(self, train: bool) -> int:
        return self.batch_size if train else 2 * self.batch_size

    def num_batches(self, train: bool) -> int:
        return math.ceil(len(self.labels[train]) / self._size(train))

    def batches(self, train: bool) -> Iterator[Batch]:
        if train and len(self.train_variants) > 1:
            yield from self._flipped_batches()
            return
        gen = self.generator if train else None
        for x, y in tensor_batches(self.inputs[train], self.labels[train], self._size(train), gen):
            yield self.precision.to_device(x), y.to(self.precision.device, non_blocking=self.precision.cuda)

    def _flipped_batches(self) -> Iterator[Batch]:
        """Shuffled training batches, each image in a variant drawn uniformly (each flip with probability 1/2)."""
        n, size, variants = len(self.labels[True]), self._size(True), self.train_variants
        order = torch.randperm(n, generator=self.generator)
        drawn = torch.randint(len(variants), (n,), generator=self.generator)
        for start in range(0, n, size):
            idx, var = order[start : start + size], drawn[start : start + size]
            x = variants[var.to(variants.device), idx.to(variants.device)]
            yield self.precision.to_device(x), self.labels[True][idx.to(self.labels[True].device)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.split.tail(x)
