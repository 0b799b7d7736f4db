"""Input image intake at the API: the base64 payload; the checks themselves are in
common/images.py (shared with the worker, which normalises the image it runs)."""

from __future__ import annotations

import base64
import binascii
import re

from common.images import ImageError

_DATA_URI = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.ASCII)


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
