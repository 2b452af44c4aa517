"""``decode_image`` on real photos and digits saved every way people save them, and on files that only
pretend to be images."""

from __future__ import annotations

import hashlib
import io
import resource
import time

import numpy as np
import pytest
from PIL import Image

from core.settings import Settings
from tests.ingest.factories import IMAGE_LIMITS, digit, encode, photo, png_bomb
from workers.ingest import (
    DecodedImage,
    ImageLimits,
    ImageRejected,
    canonical_bytes,
    canonical_copy,
    decode_image,
    decoding,
)


def decode(data: bytes, filename: str = "upload.bin") -> DecodedImage:
    return decode_image(data, filename, IMAGE_LIMITS)


def rejection(data: bytes, filename: str = "upload.bin", limits: ImageLimits = IMAGE_LIMITS) -> str:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, filename, limits)
    return caught.value.reason


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_limits_come_from_settings() -> None:
    assert ImageLimits.from_settings(Settings(max_image_pixels=123)) == ImageLimits(123)


def test_png_digit_decodes_with_its_metadata() -> None:
    data = encode(digit(0))
    decoded = decode(data, "0/d0.png")
    assert decoded.image.mode == "RGB" and decoded.image.size == (32, 32)
    assert (decoded.format, decoded.width, decoded.height, decoded.size_bytes) == ("PNG", 32, 32, len(data))
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert (pixels(decoded.image)[..., 0] == pixels(digit(0))).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_every_accepted_format_decodes(fmt: str) -> None:
    decoded = decode(encode(photo("coffee").convert("P") if fmt == "GIF" else photo("coffee"), fmt))
    assert decoded.format == fmt and decoded.image.size == (600, 400) and decoded.image.mode == "RGB"


def test_type_is_judged_by_content_not_name() -> None:
    assert decode(encode(photo("coffee"), "PNG"), "coffee.jpg").format == "PNG"


@pytest.mark.parametrize(
    ("data", "filename", "detected"),
    [
        (b"just some notes about my cat\n", "x.jpg", "detected: text, although it is named .jpg"),
        (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "cat.png", "detected: HTML"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "logo.png", "detected: SVG drawing"),
        (bytes(range(256)) * 4, "noise.png", "unrecognised content"),
    ],
)
def test_non_images_named_like_images_are_rejected(data: bytes, filename: str, detected: str) -> None:
    reason = rejection(data, filename)
    assert reason.startswith("file content is not a supported image format")
    assert detected in reason and "accepted formats: JPEG, PNG, GIF, BMP, TIFF, WEBP" in reason


@pytest.mark.parametrize(("fmt", "detected"), [("PDF", "PDF document"), ("ICO", "Windows icon")])
def test_real_images_in_other_formats_are_rejected(fmt: str, detected: str) -> None:
    assert f"detected: {detected}" in rejection(encode(photo("coffee"), fmt), "coffee.png")


def test_empty_file() -> None:
    assert rejection(b"", "empty.png") == "empty file"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_rejected(fmt: str) -> None:
    data = encode(photo("chelsea"), fmt)
    assert rejection(data[: len(data) // 2]) == "image data is truncated or corrupt"


def test_truncated_header_with_an_image_signature_is_corrupt_not_foreign() -> None:
    assert rejection(encode(photo("chelsea"), "PNG")[:20]) == "image data is truncated or corrupt"


@pytest.mark.parametrize(("side", "megapixels"), [(30_000, "900"), (7_000, "49")])
def test_image_bomb_is_rejected_before_its_pixels_exist(side: int, megapixels: str) -> None:
    bomb = png_bomb(side, side)  # ~100 KB declaring side² pixels
    assert len(bomb) < 200_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    reason = rejection(bomb, "bomb.png")
    assert time.perf_counter() - started < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 50 * 1024
    assert reason == f"image is {megapixels} MP, above the 40 MP limit (possible decompression bomb)"


def test_pixel_limit_is_the_configured_one() -> None:
    reason = rejection(encode(photo("coffee")), limits=ImageLimits(max_pixels=100_000))
    assert reason == "image is 0.24 MP, above the 0.1 MP limit (possible decompression bomb)"
    assert decode_image(encode(photo("coffee")), "c.png", ImageLimits(max_pixels=240_000)).width == 600


def test_cmyk_jpeg_becomes_rgb() -> None:
    original = photo("coffee")
    decoded = decode(encode(original.convert("CMYK"), "JPEG", quality=95))
    assert decoded.image.mode == "RGB"
    assert np.abs(pixels(decoded.image) - pixels(original)).mean() < 6


def test_16_bit_grayscale_png_is_divided_by_257() -> None:
    camera = np.asarray(photo("camera"))
    sixteen = Image.fromarray(camera.astype(np.uint16) * 257)
    assert sixteen.mode == "I;16"
    decoded = decode(encode(sixteen, "PNG"))
    assert (pixels(decoded.image) == camera[..., None]).all()


def test_float_tiff_is_stretched_to_the_full_range() -> None:
    camera = np.asarray(photo("camera"), dtype=np.float32)
    decoded = decode(encode(Image.fromarray(camera / 1000.0 + 3.0), "TIFF"))
    expected = np.rint((camera - camera.min()) * 255 / (camera.max() - camera.min()))
    assert (pixels(decoded.image) == expected[..., None]).all()


def test_rgba_png_is_composited_over_white() -> None:
    coffee = photo("coffee")
    alpha = Image.new("L", coffee.size, 255)
    alpha.paste(0, (0, 0, 300, 400))  # left half fully transparent
    rgba = coffee.copy()
    rgba.putalpha(alpha)
    result = pixels(decode(encode(rgba, "PNG")).image)
    assert (result[:, :300] == 255).all()
    assert (result[:, 300:] == pixels(coffee)[:, 300:]).all()


def test_palette_png_with_transparent_background_is_composited_over_white() -> None:
    image = digit(0).convert("P")
    background = image.getpixel((0, 0))  # the digit's black background
    result = pixels(decode(encode(image, "PNG", transparency=background)).image)
    original = pixels(digit(0))
    assert (result[original == 0] == 255).all()
    assert (result[original != 0] == original[original != 0][:, None]).all()


def test_one_bit_bmp_becomes_rgb() -> None:
    bilevel = digit(0).point(lambda v: 255 if v > 127 else 0).convert("1")
    result = pixels(decode(encode(bilevel, "BMP")).image)
    assert set(np.unique(result)) == {0, 255}


def test_animated_gif_keeps_the_first_frame() -> None:
    first, second = digit(0), digit(1)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    result = pixels(decode(data).image)[..., 0]
    assert (result == pixels(first)).all() and not (result == pixels(second)).all()


def test_exif_orientation_is_applied() -> None:
    chelsea = photo("chelsea")  # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    decoded = decode(encode(chelsea, "JPEG", quality=95, exif=exif))
    assert (decoded.width, decoded.height) == (300, 451)
    upright = pixels(chelsea.transpose(Image.Transpose.ROTATE_270))
    assert np.abs(pixels(decoded.image) - upright).mean() < 4


def test_canonical_copy_shrinks_the_short_side_losslessly() -> None:
    copy = Image.open(io.BytesIO(canonical_copy(photo("coffee"), 320)))
    assert copy.format == "PNG" and copy.size == (480, 320)
    astronaut = Image.open(io.BytesIO(canonical_copy(photo("astronaut"), 320)))
    assert astronaut.size == (320, 320)


def test_canonical_copy_never_enlarges() -> None:
    small = decode(encode(digit(0))).image
    copy = Image.open(io.BytesIO(canonical_copy(small, 320)))
    assert copy.size == (32, 32) and (pixels(copy) == pixels(small)).all()


def test_pillow_limit_is_restored_for_other_users() -> None:
    before = Image.MAX_IMAGE_PIXELS
    rejection(png_bomb(7_000, 7_000))
    decode(encode(digit(0)))
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(
    ("make", "reused"),
    [
        (lambda: encode(digit(0)), True),  # 8-bit grey PNG, small: the upload is already canonical
        (lambda: encode(photo("astronaut").resize((300, 300))), True),  # RGB PNG within the short side
        (lambda: encode(photo("coffee")), False),  # larger than the short side: shrunk
        (lambda: encode(digit(0).convert("LA")), False),  # transparency is composited on white
        (lambda: encode(photo("astronaut").resize((300, 300)), "JPEG"), False),  # lossy: re-encoded
        (lambda: encode(digit(0), exif=_rotated_exif()), False),  # EXIF rotation applied
    ],
)
def test_the_canonical_copy_is_the_upload_only_when_that_is_lossless_and_small(make, reused: bool) -> None:
    data = make()
    decoded = decode(data, "x.png")
    copy = canonical_bytes(decoded, data, 320)
    assert (copy == data) is reused
    stored = Image.open(io.BytesIO(copy))
    want = (
        decoded.image if min(decoded.image.size) <= 320 else Image.open(io.BytesIO(canonical_copy(decoded.image, 320)))
    )
    assert (pixels(stored.convert("RGB")) == pixels(want.convert("RGB"))).all()  # the same pixels either way


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


def test_decoding_many_on_threads_gives_what_one_at_a_time_gives() -> None:
    from concurrent.futures import ThreadPoolExecutor

    uploads = [encode(digit(i)) for i in range(40)] + [png_bomb(7_000, 7_000), b"not an image"]
    before = Image.MAX_IMAGE_PIXELS

    def one(decode_fn, data):  # type: ignore[no-untyped-def]
        try:
            return decode_fn(data, "x.png").sha256
        except ImageRejected as exc:
            return exc.reason

    with decoding(IMAGE_LIMITS) as decode_fn, ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda d: one(decode_fn, d), uploads))
    assert threaded == [one(lambda d, n: decode_image(d, n, IMAGE_LIMITS), d) for d in uploads]
    assert "limit" in threaded[-2] and before == Image.MAX_IMAGE_PIXELS
