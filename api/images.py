"""Input image intake: decode, check limits before the full decode, normalise.

Output-size rule (documented in the README): the image is scaled down, keeping its
aspect ratio, so that its long side is at most `MAX_OUTPUT_SIDE` (1024 by default),
then each side is floored to a multiple of 8 (the VAE works on 8-pixel blocks). Sides
under 64 pixels after that are refused. Outputs have exactly that size.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
# 8-bit pixel modes that convert to RGB without guessing: grayscale, palette and alpha
# (flattened on white) are fine. CMYK needs a colour profile to look right and 16-bit
# samples would be silently truncated, so those are refused with a message that says
# what to send instead (README, "Input images").
ALLOWED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_SIDE = 64
_DATA_URI = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)


class ImageError(ValueError):
    """An input image that cannot be used; the message is shown to the client."""


@dataclass(frozen=True)
class PreparedImage:
    png: bytes
    width: int
    height: int


def decode_base64(data: str, max_bytes: int) -> bytes:
    """Plain base64 or a `data:image/...;base64,` URI, at most `max_bytes` decoded."""
    payload = _DATA_URI.sub("", data.strip(), count=1)
    # Refuse by length before decoding, so an oversized payload costs no memory.
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ImageError(f"image: larger than the limit of {max_bytes} bytes")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("image: not valid base64") from exc
    if not raw:
        raise ImageError("image: empty")
    if len(raw) > max_bytes:
        raise ImageError(f"image: larger than the limit of {max_bytes} bytes")
    return raw


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    w = int(width * scale) // 8 * 8
    h = int(height * scale) // 8 * 8
    return w, h


def prepare(raw: bytes, *, max_pixels: int, max_side: int) -> PreparedImage:
    """Validate and normalise to an RGB PNG of the output size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(raw))  # reads the header only
    except UnidentifiedImageError as exc:
        raise ImageError("image: not a JPEG, PNG or WebP image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image: more than {max_pixels} pixels") from exc
    if img.format not in ALLOWED_FORMATS:
        raise ImageError(f"image: format {img.format} is not supported (use JPEG, PNG or WebP)")
    width, height = img.size
    # Checked on the header, before any pixel is decoded: a decompression bomb is
    # refused without allocating its pixels.
    if width * height > max_pixels:
        raise ImageError(f"image: {width}x{height} is more than the limit of {max_pixels} pixels")
    if getattr(img, "n_frames", 1) > 1:
        raise ImageError("image: animated images are not supported")
    _check_pixel_format(img, raw)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("image: the image data is truncated or corrupt") from exc

    img = ImageOps.exif_transpose(img)
    img = _to_rgb(img)
    w, h = output_size(img.width, img.height, max_side)
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageError(f"image: too small; each side must be at least {MIN_SIDE} pixels")
    if (w, h) != img.size:
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return PreparedImage(png=buf.getvalue(), width=w, height=h)


def _check_pixel_format(img: Image.Image, raw: bytes) -> None:
    if img.mode == "CMYK":
        raise ImageError("image: CMYK images are not supported; send an RGB image")
    # Pillow reads 16-bit RGB(A) PNGs as 8-bit modes, so the bit depth is taken from
    # the IHDR chunk, which always comes first: byte 24 of the file.
    if img.format == "PNG" and raw.startswith(_PNG_SIGNATURE) and len(raw) > 24 and raw[24] == 16:
        raise ImageError("image: 16-bit PNGs are not supported; send an 8-bit image")
    if img.mode not in ALLOWED_MODES:
        raise ImageError(f"image: pixel mode {img.mode} is not supported; send an 8-bit RGB image")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
