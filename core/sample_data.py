"""Real labelled images that ship inside packages, written as image files or zips: scikit-learn's
digits (1,797 handwritten 8×8 digits) and Debian's ``dataset-fashion-mnist`` (70,000 28×28 product photos).
Used by the demo, the tests and the benchmarks; nothing here is downloaded at run time."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)


def fashion_available() -> bool:
    return (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×28×28, labels int) from Debian's package; ``split`` is "train" or "t10k"."""
    if not fashion_available():
        raise FileNotFoundError(f"Fashion-MNIST not found under {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    return _read_idx(FASHION_DIR / f"{split}-images-idx3-ubyte.gz"), _read_idx(
        FASHION_DIR / f"{split}-labels-idx1-ubyte.gz"
    )


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 N×8×8 (0..16 scaled to 0..255) and int labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images * (255.0 / 16.0)).round().astype(np.uint8), bunch.target.astype(int)


def stratified_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` images of every class, chosen with a seeded generator."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def encode_png(pixels: np.ndarray, side: int | None = None) -> bytes:
    """PNG bytes of ``pixels``, enlarged (bicubic) to ``side`` × ``side`` when given."""
    from PIL import Image

    image = Image.fromarray(pixels)
    if side is not None:
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def iter_labelled_pngs(
    source: str, per_class: int, seed: int = 0, side: int | None = None
) -> Iterator[tuple[str, str, bytes]]:
    """(file name, label, PNG bytes) for a stratified subset of ``source`` ("fashion" or "digits"),
    enlarged to ``side`` × ``side`` pixels when given (e.g. 300, the size of photos people upload)."""
    if source == "fashion":
        images, labels = fashion_mnist("train")
        names = FASHION_CLASSES
    elif source == "digits":
        images, labels = digits()
        names = tuple(str(i) for i in range(10))
    else:
        raise ValueError(f"unknown sample source {source!r}: use 'fashion' or 'digits'")
    for idx in stratified_subset(labels, per_class, seed):
        label = names[int(labels[idx])]
        yield f"{label}_{idx:05d}.png", label, encode_png(images[idx], side)


def class_folder_zip(
    source: str, per_class: int, seed: int = 0, root: str | None = None, side: int | None = None
) -> bytes:
    """A zip with one folder per class (optionally under a single top folder ``root``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, label, data in iter_labelled_pngs(source, per_class, seed, side):
            zf.writestr(f"{root + '/' if root else ''}{label}/{name}", data)
    return buf.getvalue()


def default_source() -> str:
    return "fashion" if fashion_available() else "digits"


def write_class_folders(source: str, per_class: int, root: Path, seed: int = 0) -> Path:
    """Real images as a person keeps them: ``root/<class>/<file>.png``; returns ``root``."""
    root = Path(root)
    for name, label, data in iter_labelled_pngs(source, per_class, seed):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / name).write_bytes(data)
    return root


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write real labelled images into one sub-folder per class.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--source", choices=["fashion", "digits"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = write_class_folders(args.source or default_source(), args.per_class, args.folder, args.seed)
    print(f"{sum(1 for p in out.rglob('*.png'))} images in {out}")
