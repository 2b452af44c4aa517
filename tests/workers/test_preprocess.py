"""Decode + resize + centre-crop: same pixels as torchvision's transforms, uint8 out, hostile input refused."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from core.errors import InvalidInput
from workers.backbones import get_backbone
from workers.runtime.preprocess import crop_box, load_rgb, stack_batch


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from core import storage
    from core.settings import reset_settings

    monkeypatch.setenv("TLSERVE_DATA_DIR", str(tmp_path / "data"))
    reset_settings()
    storage._storage_for.cache_clear()
    yield
    reset_settings()
    storage._storage_for.cache_clear()


def encode(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def torchvision_reference(img: Image.Image, name: str) -> np.ndarray:
    from torchvision import transforms as T

    prep = get_backbone(name).preprocessing
    mode = getattr(T.InterpolationMode, prep.interpolation.upper())
    out = T.CenterCrop(prep.input_size)(T.Resize(prep.resize_size, interpolation=mode)(img))
    array = np.asarray(out.convert("L" if prep.grayscale else "RGB"))
    return array[:, :, None] if array.ndim == 2 else array


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2", "resnet50", "lenet5"])
@pytest.mark.parametrize("photo", ["coffee", "chelsea", "camera"])
def test_matches_torchvision_transforms(name: str, photo: str) -> None:
    pixels = getattr(skimage.data, photo)()
    prep = get_backbone(name).preprocessing
    out = load_rgb(encode(pixels), prep, draft=False)
    ref = torchvision_reference(Image.fromarray(pixels).convert("L" if prep.grayscale else "RGB"), name)
    assert out.dtype == np.uint8 and out.shape == (prep.input_size, prep.input_size, prep.channels)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # rounding only


def test_crop_box_portrait_and_landscape() -> None:
    prep = get_backbone("resnet18").preprocessing  # 256 → 224
    left, top, right, bottom = crop_box(600, 400, prep)  # landscape: resized to 384×256
    assert top == pytest.approx(16 * 400 / 256) and right - left == pytest.approx(224 * 600 / 384)
    left, top, right, bottom = crop_box(400, 600, prep)
    assert left == pytest.approx(16 * 400 / 256) and bottom - top == pytest.approx(224 * 600 / 384)


def test_draft_decodes_big_jpegs_close_to_full_decode(tmp_path: Path) -> None:
    big = Image.fromarray(skimage.data.coffee()).resize((2400, 1600), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(big, "JPEG", quality=92))
    prep = get_backbone("efficientnet_lite0").preprocessing
    fast, exact = load_rgb(path, prep), load_rgb(path, prep, draft=False)
    assert fast.shape == exact.shape == (224, 224, 3)
    assert np.abs(fast.astype(int) - exact.astype(int)).mean() < 2.0


def test_exif_orientation_is_applied() -> None:
    pixels = skimage.data.coffee()  # 400×600 landscape
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: "rotate 90° clockwise to display"
    data = encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    prep = get_backbone("resnet18").preprocessing
    upright = load_rgb(encode(pixels, "JPEG", quality=95), prep)
    assert np.abs(load_rgb(data, prep).astype(int) - upright.astype(int)).mean() < 3.0


def test_grayscale_and_alpha() -> None:
    prep = get_backbone("lenet5").preprocessing
    assert load_rgb(encode(skimage.data.camera()), prep).shape == (32, 32, 1)
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent: composited on white
    out = load_rgb(encode(rgba), get_backbone("resnet18").preprocessing)
    assert out.shape == (224, 224, 3) and out.min() == 255


def test_gray_photo_for_rgb_backbone_has_three_equal_channels() -> None:
    out = load_rgb(encode(skimage.data.camera()), get_backbone("resnet18").preprocessing)
    assert out.shape == (224, 224, 3) and (out[..., 0] == out[..., 2]).all()


def test_garbage_and_bombs_are_invalid_input(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import reset_settings

    prep = get_backbone("resnet18").preprocessing
    with pytest.raises(InvalidInput):
        load_rgb(b"not an image", prep)
    with pytest.raises(InvalidInput):
        load_rgb(encode(skimage.data.coffee(), "JPEG")[:2000], prep)  # truncated
    monkeypatch.setenv("TLSERVE_MAX_IMAGE_PIXELS", "1000")
    reset_settings()
    with pytest.raises(InvalidInput, match="over the limit"):
        load_rgb(encode(skimage.data.coffee()), prep)


def test_stack_batch() -> None:
    a = np.zeros((8, 8, 3), np.uint8)
    assert stack_batch([a, a]).shape == (2, 8, 8, 3)
    with pytest.raises(InvalidInput):
        stack_batch([])
    with pytest.raises(InvalidInput):
        stack_batch([a, np.zeros((8, 8, 1), np.uint8)])
    with pytest.raises(InvalidInput):
        stack_batch([a.astype(np.float32)])


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "PCX", "TGA"])
def test_serving_reads_only_the_formats_ingestion_accepts(fmt: str) -> None:
    """Pillow opens dozens of formats; the serving path opens the same six as ingestion, by content."""
    from core.images import ACCEPTED_FORMATS
    from workers.ingest import images as ingest_images
    from workers.ingest.images import ImageLimits, ImageRejected, decode_image

    assert ingest_images.ACCEPTED_FORMATS is ACCEPTED_FORMATS
    pixels = skimage.data.astronaut()[:64, :64]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    prep = get_backbone("efficientnet_lite0").preprocessing
    with pytest.raises(InvalidInput, match="accepted"):
        load_rgb(buf.getvalue(), prep)
    with pytest.raises(ImageRejected):
        decode_image(buf.getvalue(), f"x.{fmt.lower()}", ImageLimits(max_pixels=10**7))
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    assert load_rgb(png.getvalue(), prep).shape[-1] == 3
