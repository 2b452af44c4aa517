"""Real images and hostile archives for the ingestion tests: digits from scikit-learn, photos from
scikit-image, zips built (and tampered with) in memory."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image
from skimage import data as skdata
from sklearn.datasets import load_digits

from workers.ingest import ArchiveLimits, ImageLimits

LIMITS = ArchiveLimits(max_members=100, max_total_bytes=8 << 20, max_member_bytes=2 << 20, max_compression_ratio=200.0)
IMAGE_LIMITS = ImageLimits(max_pixels=40_000_000)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return bunch.images, bunch.target


def digit(index: int, side: int = 32) -> Image.Image:
    """A real handwritten 8×8 digit, scaled to 0..255 and enlarged (nearest) to ``side``."""
    images, _ = _digits()
    pixels = np.rint(images[index] * (255 / 16)).astype(np.uint8)
    return Image.fromarray(pixels, "L").resize((side, side), Image.Resampling.NEAREST)


def digit_label(index: int) -> str:
    return str(_digits()[1][index])


def digit_indices(label: int, count: int) -> list[int]:
    return [int(i) for i in np.flatnonzero(_digits()[1] == label)[:count]]


def photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photos ("coffee", "chelsea", "astronaut", "camera")."""
    return Image.fromarray(getattr(skdata, name)())


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as zf:
        for name, payload in entries:
            zf.writestr(name, payload)
    return buffer.getvalue()


def digits_tree(classes: tuple[int, ...] = (0, 1, 2), per_class: int = 3, prefix: str = "") -> list[tuple[str, bytes]]:
    """Folder-per-class entries of real digit PNGs: ``{prefix}{label}/d{index}.png``."""
    return [
        (f"{prefix}{label}/d{index}.png", encode(digit(index)))
        for label in classes
        for index in digit_indices(label, per_class)
    ]


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix
    info.external_attr = 0o120777 << 16  # S_IFLNK | rwxrwxrwx
    return info, target.encode()


def set_encrypted_flag(archive: bytes, name: str) -> bytes:
    """Mark one member as encrypted (general-purpose flag bit 0) in its local and central headers, the
    way a password-protecting zipper would; its data stays readable, which is the point: we must refuse
    it from the flag, not from failing to read it."""
    return _patch_field(archive, name, local_at=6, central_at=8, change=lambda flags: flags | 0x1)


def set_method(archive: bytes, name: str, method: int) -> bytes:
    """Claim another compression method for one member (e.g. 9, Deflate64, which zipfile cannot read)."""
    return _patch_field(archive, name, local_at=8, central_at=10, change=lambda _: method)


def _patch_field(archive: bytes, name: str, local_at: int, central_at: int, change: Callable[[int], int]) -> bytes:
    """Rewrite one little-endian 16-bit field of a member's local header and central-directory entry."""
    buf = bytearray(archive)

    def patch(offset: int) -> None:
        struct.pack_into("<H", buf, offset, change(struct.unpack_from("<H", buf, offset)[0]))

    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        patch(zf.getinfo(name).header_offset + local_at)
    central = buf.find(b"PK\x01\x02")
    while central != -1:
        name_len = struct.unpack_from("<H", buf, central + 28)[0]
        if bytes(buf[central + 46 : central + 46 + name_len]) == name.encode():
            patch(central + central_at)
        central = buf.find(b"PK\x01\x02", central + 4)
    return bytes(buf)


def lie_about_count(archive: bytes, count: int) -> bytes:
    """Rewrite the end record's entry counts (the zip's own claim of how many files it holds)."""
    buf = bytearray(archive)
    end = buf.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", buf, end + 8, count, count)
    return bytes(buf)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width``×``height`` whose pixels are all zero: a few hundred KB that
    would decode into width×height pixels. Streamed through zlib, never held as pixels here."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(compressor.compress(block) for _ in range(height // 1000))
    idat += compressor.compress(row * (height % 1000)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
