"""Input images: what the API checks at submit, and how the worker normalises them.

The API refuses at submit everything that could make a job fail because of its image
(so a bad image is never charged and never stored): the format, the pixel count and
the size (read from the header, before any pixel is decoded), animation, pixel
formats, and truncated or corrupt data (JPEGs decoded at 1/8 scale: the whole
compressed stream is read, a fraction of the pixels made). It stores the image as
received. The worker normalises it when it runs the job (`normalise`): EXIF
orientation, RGB (alpha flattened on white), the output size. That work, a full decode
plus a PNG encode at submit, was most of a submit's CPU (docs/performance.md).

Output-size rule (documented in docs/api.md): the image, turned upright by its EXIF
orientation, is scaled down, keeping its aspect ratio, so that its long side is at
most `MAX_OUTPUT_SIDE` (1024 by default), then each side is floored to a multiple of 8
(the VAE works on 8-pixel blocks). Sides under 64 pixels after that are refused.
Outputs have exactly that size.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from common.refusals import InvalidInput

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
_OPEN_FORMATS = tuple(sorted(ALLOWED_FORMATS))  # what Image.open(formats=...) takes
# 8-bit pixel modes that convert to RGB without guessing: grayscale, palette and alpha
# (flattened on white) are fine. CMYK needs a colour profile to look right and 16-bit
# samples would be silently truncated, so those are refused with a message that says
# what to send instead (docs/api.md, "Input images").
ALLOWED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_SIDE = 64
_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = frozenset({5, 6, 7, 8})  # orientations that swap width and height
# Content type and file extension of each format, as stored (common.storage.input_key).
_TYPES = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}
EXTENSIONS = frozenset(extension for _, extension in _TYPES.values())


class ImageError(InvalidInput, ValueError):
    """An input image that cannot be used; the message is shown to the client (400)."""


@dataclass(frozen=True)
class CheckedImage:
    """An image accepted at submit, and the size of its job's outputs."""

    format: str  # one of ALLOWED_FORMATS
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return _TYPES[self.format][0]

    @property
    def extension(self) -> str:
        return _TYPES[self.format][1]


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    w = int(width * scale) // 8 * 8
    h = int(height * scale) // 8 * 8
    return w, h


def check(raw: bytes, *, max_pixels: int, max_side: int) -> CheckedImage:
    """Refuse (ImageError) what the worker could not use; else the output size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Only these decoders are tried (a smaller attack surface than all of
            # Pillow's); reads the header only.
            img: Image.Image = Image.open(io.BytesIO(raw), formats=_OPEN_FORMATS)
    except UnidentifiedImageError as exc:
        if raw[:4] == b"GIF8":  # a common mistake: say what it is
            raise ImageError("image: format GIF is not supported (use JPEG, PNG or WebP)") from exc
        raise ImageError("image: not a JPEG, PNG or WebP image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image: more than {max_pixels} pixels") from exc
    width, height = img.size
    # Checked on the header, before any pixel is decoded: a decompression bomb is
    # refused without allocating its pixels.
    if width * height > max_pixels:
        raise ImageError(f"image: {width}x{height} is more than the limit of {max_pixels} pixels")
    if getattr(img, "n_frames", 1) > 1:
        raise ImageError("image: animated images are not supported")
    _check_pixel_format(img, raw)
    if img.format == "JPEG":
        # Decode at 1/8 scale: libjpeg still reads every compressed block (a truncated
        # or corrupt stream fails as in a full decode) but makes 1/64 of the pixels.
        img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("image: the image data is truncated or corrupt") from exc
    # After the load: a PNG's EXIF may follow its pixel data.
    if img.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS:
        width, height = height, width
    w, h = output_size(width, height, max_side)
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageError(f"image: too small; each side must be at least {MIN_SIDE} pixels")
    return CheckedImage(str(img.format), w, h)


def normalise(raw: bytes, width: int, height: int) -> Image.Image:
    """An image accepted by `check`, made what the pipeline takes: upright (EXIF), RGB
    (alpha flattened on white), `width` × `height` (its `check` size)."""
    img: Image.Image = Image.open(io.BytesIO(raw), formats=_OPEN_FORMATS)
    img = ImageOps.exif_transpose(img)
    img = _to_rgb(img)
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    return img


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
