"""Turning what a user has on disk into what the API takes: a dataset folder (one sub-folder per class, or
a ``labels.csv`` beside the images) or a ``labels.csv`` file into a zip written file by file to a temporary
file (never held in memory), and images given as paths, bytes or PIL images into named uploads."""

from __future__ import annotations

import csv
import io
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tlserve_client.errors import TLServeError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
_STORED = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".zip"})  # already compressed: store as is
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
LABELS_CSV = "labels.csv"


class BadPath(TLServeError):
    def __init__(self, message: str) -> None:
        super().__init__("bad_path", message)


def is_zip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) in ZIP_MAGIC


def _visible_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath, name)


def dataset_members(path: Path) -> list[tuple[Path, str]]:
    """(file on disk, name in the zip) for a dataset folder or a ``labels.csv``; raises ``BadPath``."""
    if not path.exists():
        raise BadPath(f"{path} does not exist: give a folder with one sub-folder per class, a zip or a labels.csv")
    if path.is_dir():
        members = [(f, f.relative_to(path).as_posix()) for f in _visible_files(path)]
        if not members:
            raise BadPath(f"{path} is empty: put each image in a sub-folder named after its class")
        return members
    if path.name.lower().endswith(".csv"):
        return _csv_members(path)
    raise BadPath(f"{path} is neither a folder, a zip nor a labels.csv")


def _csv_members(csv_path: Path) -> list[tuple[Path, str]]:
    """The CSV itself (as ``labels.csv``) and every file it lists that exists, paths relative to its folder.
    Listed files that are missing are left to the service, which reports each one with a reason."""
    base = csv_path.parent
    members = [(csv_path, LABELS_CSV)]
    seen: set[str] = set()
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            for row in csv.reader(fh):
                if not row or not row[0].strip():
                    continue
                rel = row[0].strip().replace("\\", "/")
                target = base / rel
                if rel in seen or not target.is_file():
                    continue
                seen.add(rel)
                members.append((target, rel))
    except UnicodeDecodeError:
        raise BadPath(f"{csv_path} is not UTF-8 text; save it as 'CSV UTF-8'") from None
    if len(members) == 1:
        raise BadPath(f"{csv_path} lists no file that exists beside it: paths are relative to the CSV's folder")
    return members


def zip_to_tempfile(members: Iterable[tuple[Path, str]], on_file: Any = None) -> IO[bytes]:
    """Write ``members`` into a zip in a temporary file, one file at a time; returns it rewound."""
    tmp = tempfile.TemporaryFile(prefix="tlserve-", suffix=".zip")  # noqa: SIM115 - returned to the caller
    try:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for source, arcname in members:
                method = zipfile.ZIP_STORED if source.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
                zf.write(source, arcname, compress_type=method)
                if on_file is not None:
                    on_file(arcname)
    except BaseException:
        tmp.close()
        raise
    tmp.seek(0)
    return tmp


def image_files(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """(file, display name) of every image among ``paths``; folders are walked (files with image suffixes)."""
    out: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = [f for f in _visible_files(path) if f.suffix.lower() in IMAGE_SUFFIXES]
            out.extend((f, f.as_posix()) for f in found)
        elif path.is_file():
            out.append((path, path.as_posix()))
        else:
            raise BadPath(f"{path} does not exist: give image files or folders of images")
    if not out:
        raise BadPath("no images found: give image files (.jpg, .png, ...) or folders that hold them")
    return out


def as_upload(image: Any, index: int) -> tuple[str, bytes]:
    """(name, bytes) of one image: a path, raw bytes, a ``(name, bytes)`` pair, a binary file or a PIL image."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise BadPath(f"{path} is not a file")
        return path.as_posix(), path.read_bytes()
    if isinstance(image, bytes | bytearray | memoryview):
        return f"image{index}", bytes(image)
    if isinstance(image, tuple) and len(image) == 2:
        name, data = image
        return str(name), bytes(data)
    if hasattr(image, "read"):
        data = image.read()
        return Path(getattr(image, "name", f"image{index}")).name, data
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image: encode losslessly as PNG
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name = Path(getattr(image, "filename", "") or f"image{index}.png").name
        return name, buffer.getvalue()
    raise TypeError(f"image {index}: expected a path, bytes, (name, bytes), a binary file or a PIL image")
