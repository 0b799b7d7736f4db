"""Encoded test images, good and bad, built in memory (no files in the repository)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid PNG header that claims `width`×`height` RGB pixels, with a few bytes of
    pixel data: anything that decodes it before checking the size would need gigabytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def png_16bit_rgb(width: int = 96, height: int = 80) -> bytes:
    """48-bit RGB: Pillow opens it as plain "RGB", only the header tells."""
    row = b"\0" + struct.pack(">HHH", 40000, 1000, 20000) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(row * height))
        + _png_chunk(b"IEND", b"")
    )


def png_16bit_gray(width: int = 96, height: int = 80) -> bytes:
    return encode(Image.new("I;16", (width, height), 40000), "PNG")


def jpeg(width: int = 96, height: int = 80, **options: object) -> bytes:
    img = Image.new("RGB", (width, height), (200, 40, 90))
    for x in range(0, width, 4):
        img.putpixel((x, x % height), (255, 255, 255))
    return encode(img, "JPEG", quality=90, **options)


def truncated_jpeg() -> bytes:
    data = jpeg(256, 256)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = encode(Image.effect_noise((256, 256), 64).convert("RGB"), "PNG")
    return data[: len(data) // 2]


def cmyk_jpeg(width: int = 96, height: int = 80) -> bytes:
    return encode(Image.new("CMYK", (width, height), (0, 200, 200, 0)), "JPEG")


def grayscale_png(width: int = 96, height: int = 80) -> bytes:
    return encode(Image.new("L", (width, height), 128), "PNG")


def animated_gif(width: int = 96, height: int = 80) -> bytes:
    frames = [Image.new("P", (width, height), i * 40) for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def animated_png(width: int = 96, height: int = 80) -> bytes:
    frames = [Image.new("RGB", (width, height), (i * 80, 0, 0)) for i in range(3)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def transparent_png(width: int = 96, height: int = 80) -> bytes:
    """Fully transparent except an opaque red square in the top-left corner."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    for x in range(16):
        for y in range(16):
            img.putpixel((x, y), (255, 0, 0, 255))
    return encode(img, "PNG")


def jpeg_with_orientation(width: int, height: int, orientation: int) -> bytes:
    """A JPEG stored as `width`×`height` whose EXIF says how to turn it for display.
    The left half is black and the right half white, so the turn can be seen."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())
