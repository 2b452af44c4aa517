"""Turning an uploaded file into a trustworthy RGB image, or a reason why not.

The type is judged by content (Pillow, restricted to six common formats), never by the file name. Size is
judged from the header before any pixel is decoded, and the whole image is then decoded so truncation is
found here, not in the middle of a training run.

Colour rule (one for every format, so that a class is not learned from how its files were saved):

- transparency (RGBA, LA, PA, RGBa, or a palette/grey/RGB image with a transparent colour) is
  composited over white;
- 16-bit grayscale (``I;16*``) becomes 8-bit by dividing by 257, so 0..65535 maps exactly onto 0..255;
- 32-bit integer and float grayscale (``I``, ``F``), which have no fixed range, are stretched min..max
  onto 0..255 (a constant image becomes black);
- everything else (1, L, P, CMYK, YCbCr, LAB, HSV, ...) goes through Pillow's own ``convert("RGB")``;
- EXIF orientation is applied first, and only the first frame of an animation is kept.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.images import ACCEPTED_FORMATS
from core.settings import Settings
from workers.ingest import sniff

_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_CORRUPT = "image data is truncated or corrupt"
_ORIENTATION = 0x0112  # the EXIF tag
# What a malformed file can make Pillow's decoders raise.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    ZeroDivisionError,
)


class ImageRejected(Exception):
    """The file is not an image we accept; ``reason`` says why, for a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(max_pixels=settings.max_image_pixels)


@dataclass(frozen=True)
class DecodedImage:
    """An image as decoded: RGB, upright. ``sha256`` is of the uploaded bytes (the dedupe key; originals
    are stored as uploaded), ``format`` Pillow's name for what the content is."""

    image: Image.Image
    sha256: str
    format: str
    width: int
    height: int
    size_bytes: int
    # The uploaded bytes decode to exactly ``image`` wherever the service reads them: an 8-bit grey or RGB
    # PNG with no EXIF rotation (grey L → RGB → L is the identity). Its canonical copy can be the upload.
    lossless_original: bool = False


def decode_image(data: bytes, filename: str, limits: ImageLimits) -> DecodedImage:
    """Decode ``data`` fully into an upright RGB image under ``limits``, or raise ``ImageRejected``.
    ``filename`` only makes messages clearer; it never decides the type."""
    with _pixel_limit(limits.max_pixels):
        return _decode(data, filename, limits)


@contextmanager
def decoding(limits: ImageLimits) -> Iterator[Callable[[bytes, str], DecodedImage]]:
    """``decode_image`` for many images, from several threads at once: the process-wide pixel limit is set
    once around them all (Pillow releases the GIL while it decodes and encodes)."""
    with _pixel_limit(limits.max_pixels):
        yield lambda data, filename: _decode(data, filename, limits)


def _decode(data: bytes, filename: str, limits: ImageLimits) -> DecodedImage:
    if not data:
        raise ImageRejected("empty file")
    im = _open(data, filename, limits)
    try:
        im.load()  # first frame only: Image.open leaves an animation on frame 0
    except _BOMB as e:  # a frame or tile larger than the declared canvas
        raise ImageRejected(_too_large(str(e), limits)) from None
    except _DECODE_ERRORS:
        raise ImageRejected(_CORRUPT) from None
    upright = _upright(im)
    image = _to_rgb(upright)
    lossless = (
        im.format == "PNG"
        and im.mode in ("L", "RGB")
        and "transparency" not in im.info
        and im.getexif().get(_ORIENTATION, 1) == 1
    )
    return DecodedImage(
        image, hashlib.sha256(data).hexdigest(), im.format or "unknown", image.width, image.height, len(data), lossless
    )


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Make Pillow's decompression-bomb check use our limit and be an error rather than a warning.

    Pillow checks the declared width×height against ``Image.MAX_IMAGE_PIXELS`` as it reads the header,
    before allocating any pixel, and again for each frame and tile. Both that setting and the warning
    filters are process-wide, so they are restored on the way out (other Pillow users keep their own
    limit) and decoding belongs in processes, not threads."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _open(data: bytes, filename: str, limits: ImageLimits) -> Image.Image:
    """Identify and read the header; nothing is decoded yet."""
    try:
        im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except _BOMB as e:
        raise ImageRejected(_too_large(str(e), limits)) from None
    except UnidentifiedImageError:
        raise ImageRejected(_not_an_image(data, filename)) from None
    except _DECODE_ERRORS:
        raise ImageRejected(_CORRUPT) from None
    if im.width == 0 or im.height == 0:
        raise ImageRejected(f"image has no pixels ({im.width}×{im.height})")
    return im


def _too_large(pillow_message: str, limits: ImageLimits) -> str:
    """Our wording for Pillow's bomb error, which carries the pixel count but not the dimensions."""
    found = re.search(r"\((\d+) pixels\)", pillow_message)
    size = f"{_mp(int(found.group(1)))} MP, above" if found else "larger than"
    return f"image is {size} the {_mp(limits.max_pixels)} MP limit (possible decompression bomb)"


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.3g}"


def _not_an_image(data: bytes, filename: str) -> str:
    what = sniff.describe(data)
    if what in ACCEPTED_FORMATS:  # the signature is right but Pillow could not parse the header
        return _CORRUPT
    claimed = PurePath(filename).suffix
    detail = f"detected: {what}" if what else "unrecognised content"
    named = f", although it is named {claimed}" if claimed else ""
    return (
        f"file content is not a supported image format ({detail}{named}); accepted formats: "
        f"{', '.join(ACCEPTED_FORMATS)}"
    )


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation. A photo whose EXIF is damaged keeps the orientation it was stored in:
    the pixels are fine, and refusing it would lose a good image."""
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS:
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Apply the colour rule of the module docstring."""
    if im.mode.startswith("I;16"):
        gray = np.asarray(im, dtype=np.float64) / 257.0
        return Image.fromarray(np.rint(gray).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("I", "F"):
        return Image.fromarray(_stretch(np.asarray(im, dtype=np.float64)), "L").convert("RGB")
    if im.mode in _TRANSPARENT_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageRejected(f"the image's colour mode {im.mode} is not supported") from None


def _stretch(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def canonical_copy(image: Image.Image, short_side: int) -> bytes:
    """A PNG of ``image`` with its shorter side brought down to ``short_side`` (never enlarged), for the
    cheap later passes (previews, feature extraction at small input sizes). Lanczos, lossless; zlib level 1
    (a third of the default level's time for a third more bytes: ingestion is CPU-bound, disks are not)."""
    scale = short_side / min(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def canonical_bytes(decoded: DecodedImage, data: bytes, short_side: int) -> bytes:
    """The canonical copy of a decoded upload: the upload itself when it already is one (a lossless PNG
    no larger than ``short_side``), else ``canonical_copy``."""
    if decoded.lossless_original and min(decoded.width, decoded.height) <= short_side:
        return data
    return canonical_copy(decoded.image, short_side)
