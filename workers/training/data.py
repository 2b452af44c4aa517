"""The data side of fine-tuning (after Lightning's ``LightningDataModule``): samples in, decoded uint8
tensors, shuffled batches. Nothing here knows the model (``paths.py`` joins the two).

Images are read and decoded on demand, a batch at a time, by a small thread pool that works a bounded number
of batches ahead (Celery's prefork children are daemonic and cannot start DataLoader worker processes); the
first images decoded stay in memory up to a byte budget, so a small dataset is decoded once and a large one
never all at once. Images stay uint8 until the batch (4× less memory than float32); per-image random
operations run on uint8 on the CPU in the training thread (so the random draws keep their order), and
normalisation runs per batch on the training device.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision.transforms import v2

from core.errors import InvalidInput
from workers.backbones.spec import Preprocessing
from workers.training.augment import rgb_pca

Batch = tuple[torch.Tensor, torch.Tensor]

DECODE_THREADS = 2  # default size of the decode pool
PREFETCH_BATCHES = 2  # batches decoded ahead of the one being trained on
DECODED_CACHE_BYTES = 1024 * 2**20  # default budget of decoded images kept in memory (both splits together)
PCA_MAX_IMAGES = 2000  # the colour statistics of pca_color come from at most this many training images


class StoredImages(Sequence[bytes]):
    """Encoded images read only when asked for: ``load(keys[i])`` (e.g. the storage's ``get_bytes``)."""

    def __init__(self, keys: Sequence[str], load: Callable[[str], bytes]) -> None:
        self.keys, self.load = list(keys), load

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> StoredImages: ...

    def __getitem__(self, i: int | slice) -> bytes | StoredImages:
        if isinstance(i, slice):
            return StoredImages(self.keys[i], self.load)
        return self.load(self.keys[i])


@dataclass(frozen=True)
class Samples:
    """Labelled images: encoded bytes (any format Pillow reads) or uint8 arrays (H×W or H×W×C, any size), in
    memory or read on demand (:class:`StoredImages`). ``labels`` index ``classes``; without ``classes`` they
    are named "0", "1", ..."""

    images: Sequence[bytes | np.ndarray]
    labels: Sequence[int]
    classes: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise InvalidInput(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


class _Chained(Sequence[bytes | np.ndarray]):
    """Two image sequences read as one, without reading either (they may be :class:`StoredImages`)."""

    def __init__(self, first: Sequence[bytes | np.ndarray], second: Sequence[bytes | np.ndarray]) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i: int) -> bytes | np.ndarray:  # type: ignore[override]  # no slices needed
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.first[i] if i < len(self.first) else self.second[i - len(self.first)]


def joined(first: Samples, second: Samples) -> Samples:
    """``first`` then ``second`` as one set of samples (train + val for the refit after selection)."""
    return Samples(
        _Chained(first.images, second.images), [*first.labels, *second.labels], first.classes or second.classes
    )


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


class DecodedImages:
    """One split's images as uint8 C×S×S tensors (S = input size), decoded on demand with ``load_rgb`` (resize
    and centre crop of the backbone's preprocessing). The first images decoded are kept while they fit in
    ``cache_bytes``; the others are decoded again each time they are asked for. Safe to call from threads."""

    def __init__(self, images: Sequence[bytes | np.ndarray], prep: Preprocessing, cache_bytes: int) -> None:
        self.images, self.prep = images, prep
        self.shape = (1 if prep.grayscale else 3, prep.input_size, prep.input_size)
        self.item_bytes = int(np.prod(self.shape))
        self.capacity = min(len(images), max(0, cache_bytes) // self.item_bytes)
        self.decodes = 0  # how many images were decoded (cache misses)
        self._cache: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def cached_bytes(self) -> int:
        return len(self._cache) * self.item_bytes

    def get(self, i: int) -> torch.Tensor:
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        from workers.runtime.preprocess import load_rgb

        raw = self.images[i]
        array = load_rgb(_array_bytes(raw) if isinstance(raw, np.ndarray) else raw, self.prep)
        image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        with self._lock:
            self.decodes += 1
            if len(self._cache) < self.capacity:
                self._cache[i] = image
        return image

    def batch(self, rows: Sequence[int]) -> torch.Tensor:
        """uint8 B×C×S×S of ``rows``, in that order."""
        if not len(rows):
            return torch.empty((0, *self.shape), dtype=torch.uint8)
        return torch.stack([self.get(int(i)) for i in rows])


def split_budget(total_bytes: int, *sizes: int) -> list[int]:
    """``total_bytes`` of decoded-image cache shared between splits in proportion to their sizes."""
    n = sum(sizes)
    return [total_bytes * s // n if n else 0 for s in sizes]


def decode(samples: Samples, prep: Preprocessing) -> torch.Tensor:
    """Every image resized, centre-cropped and stacked: uint8 N×C×S×S (S = input size), at once; for small
    sets (checks, predictions in tests) — training streams through :func:`prefetch`."""
    images = DecodedImages(samples.images, prep, cache_bytes=0)
    return images.batch(range(len(images)))


def prefetch(
    orders: Iterable[Sequence[int]], images: DecodedImages, *, threads: int, ahead: int = PREFETCH_BATCHES
) -> Iterator[tuple[Sequence[int], torch.Tensor]]:
    """(rows, uint8 batch) for every list of rows of ``orders``, in order. A pool of ``threads`` decodes at
    most ``ahead`` batches beyond the one handed out, so at most ``ahead + 1`` decoded batches (plus the
    cache) are alive; leaving the loop early cancels what was queued."""
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="decode") as pool:
        pending: deque[tuple[Sequence[int], Future[torch.Tensor]]] = deque()
        try:
            for rows in orders:
                pending.append((rows, pool.submit(images.batch, rows)))
                if len(pending) > ahead:
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def in_order(n: int, batch_size: int) -> list[list[int]]:
    """Rows 0..n-1 in batches of ``batch_size``."""
    return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]


class _Rows(Dataset[list[int]]):
    """A stand-in dataset whose items are the row lists themselves: the DataLoader only draws the order."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: list[int]) -> list[int]:  # type: ignore[override]
        return index


def _as_is(rows: list[int]) -> list[int]:
    return rows


def batch_orders(n: int, batch_size: int, *, generator: torch.Generator | None) -> DataLoader[list[int]]:
    """The rows of each batch: shuffled when a generator is given (its state decides the order, drawn
    exactly as a DataLoader draws it), in order otherwise."""
    sampler = RandomSampler(_Rows(n), generator=generator) if generator is not None else SequentialSampler(_Rows(n))
    return DataLoader(  # its own generator even in order: DataLoader draws a worker seed per epoch
        _Rows(n),
        sampler=BatchSampler(sampler, batch_size, drop_last=False),
        batch_size=None,
        collate_fn=_as_is,
        generator=generator or torch.Generator(),
    )


class ImageBatches:
    """One split as training batches: uint8 images (random per-image ``ops`` applied in the calling thread)
    and int64 labels, in the order of ``orders``, decoded ahead by :func:`prefetch`."""

    def __init__(
        self,
        images: DecodedImages,
        labels: torch.Tensor,
        orders: Iterable[Sequence[int]],
        *,
        ops: Sequence[v2.Transform] = (),
        threads: int = DECODE_THREADS,
        pin_memory: bool = False,
    ) -> None:
        self.images, self.labels, self.orders, self.threads, self.pin = images, labels, orders, threads, pin_memory
        self.ops = v2.Compose(list(ops)) if ops else None

    def __len__(self) -> int:
        return len(self.orders)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Batch]:
        for rows, batch in prefetch(self.orders, self.images, threads=self.threads):
            if self.ops is not None:
                batch = torch.stack([self.ops(img) for img in batch])
            labels = self.labels.index_select(0, torch.as_tensor(rows, dtype=torch.long))
            yield (batch.pin_memory(), labels.pin_memory()) if self.pin else (batch, labels)


def sampled_rgb_pca(
    images: DecodedImages, *, seed: int, threads: int = DECODE_THREADS, max_images: int = PCA_MAX_IMAGES
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~workers.training.augment.rgb_pca` of a seeded sample: at most ``max_images`` images and
    200,000 pixels spread evenly over them, so that the memory it takes does not grow with the dataset."""
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    rows = torch.randperm(n, generator=gen)[:max_images].sort().values.tolist() if n > max_images else list(range(n))
    per_image = max(1, 200_000 // max(1, len(rows)))
    picked = []
    for _, batch in prefetch([rows[s : s + 64] for s in range(0, len(rows), 64)], images, threads=threads):
        flat = batch.flatten(2)  # B×C×HW
        at = torch.randint(flat.shape[2], (len(batch), 1, per_image), generator=gen)
        picked.append(flat.gather(2, at.expand(-1, flat.shape[1], -1)))
    pixels = torch.cat(picked).permute(1, 0, 2).reshape(1, images.shape[0], 1, -1)  # 1×C×1×P
    return rgb_pca(pixels, seed=seed)


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
