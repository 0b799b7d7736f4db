"""common.images on its own: what `check` refuses at submit (and how early), and how
the worker's `normalise` makes accepted images what the pipeline takes (EXIF
orientation, alpha, grayscale, output size)."""

from __future__ import annotations

import io
import tracemalloc

import pytest
from PIL import Image

from common.images import ImageError, check, normalise
from tests.support import image_samples as samples

LIMITS = {"max_pixels": 4096 * 4096, "max_side": 1024}


def _normalised(raw: bytes) -> Image.Image:
    """What the worker runs: `raw` checked at submit, then normalised."""
    checked = check(raw, **LIMITS)
    img = normalise(raw, checked.width, checked.height)
    assert img.mode == "RGB" and img.size == (checked.width, checked.height)
    return img


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"hello world", "not a JPEG, PNG or WebP"),
        (samples.truncated_jpeg(), "truncated or corrupt"),
        (samples.truncated_png(), "truncated or corrupt"),
        (samples.animated_gif(), "format GIF is not supported"),
        # Formats Pillow reads but the service does not: their decoders are never tried.
        (samples.encode(Image.new("RGB", (128, 128)), "BMP"), "not a JPEG, PNG or WebP image"),
        (samples.encode(Image.new("RGB", (128, 128)), "TIFF"), "not a JPEG, PNG or WebP image"),
        (samples.animated_png(), "animated images are not supported"),
        (samples.cmyk_jpeg(), "CMYK images are not supported; send an RGB image"),
        (samples.png_16bit_rgb(), "16-bit PNGs are not supported"),
        (samples.png_16bit_gray(), "16-bit PNGs are not supported"),
        (samples.encode(Image.new("RGB", (63, 200)), "PNG"), "at least 64 pixels"),
    ],
)
def test_refused_images_name_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as caught:
        check(raw, **LIMITS)
    assert str(caught.value).startswith("image: ")


def test_huge_dimensions_are_refused_on_the_header() -> None:
    """30000×30000 RGB would need 2.7 GB decoded; the refusal allocates almost nothing."""
    raw = samples.png_claiming_size(30000, 30000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="pixels"):
            check(raw, **LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024


def test_pixel_limit_is_the_configured_one() -> None:
    raw = samples.encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(ImageError, match="300x300 is more than the limit of 80000 pixels"):
        check(raw, max_pixels=80_000, max_side=1024)


def test_exif_orientation_is_applied_before_sizing() -> None:
    """Stored 100×200 with orientation 6 (turn 90° clockwise to display): displayed
    200×100, so the output is 200×96 (sides floored to multiples of 8), and the stored
    left half (black) is on top."""
    raw = samples.jpeg_with_orientation(100, 200, orientation=6)
    checked = check(raw, **LIMITS)
    assert (checked.width, checked.height) == (200, 96)
    img = _normalised(raw)
    top = img.getpixel((100, 10))
    bottom = img.getpixel((100, 86))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert max(top) < 40 and min(bottom) > 215


def test_alpha_is_flattened_on_white() -> None:
    img = _normalised(samples.transparent_png())
    assert img.getpixel((50, 50)) == (255, 255, 255)  # was fully transparent
    assert img.getpixel((5, 5)) == (255, 0, 0)  # was opaque red


def test_transparent_palette_png_is_flattened_on_white() -> None:
    rgba = Image.open(io.BytesIO(samples.transparent_png()))
    palette = rgba.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.info["transparency"] = palette.getpixel((50, 50))
    img = _normalised(samples.encode(palette, "PNG", transparency=palette.info["transparency"]))
    assert img.getpixel((50, 50)) == (255, 255, 255)


def test_grayscale_is_converted_to_rgb() -> None:
    img = _normalised(samples.grayscale_png())
    assert img.getpixel((10, 10)) == (128, 128, 128)


def test_large_images_are_scaled_to_the_output_rule() -> None:
    checked = check(samples.jpeg(3000, 2000), **LIMITS)
    assert (checked.width, checked.height) == (1024, 680)  # 682.67 floored to 8s
    assert _normalised(samples.jpeg(3000, 2000)).size == (1024, 680)
