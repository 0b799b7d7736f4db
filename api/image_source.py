"""Where an input image's bytes come from: the `image` field holds base64 (plain or a
`data:` URI) or an http(s) URL, which is fetched with the SSRF guards of
`common.urlsafety` and the same byte limit as base64. Both end in `common.images.check`."""

from __future__ import annotations

import re

from api.images import decode_base64
from common import urlsafety
from common.images import ImageError
from common.settings import Settings

_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(value: str) -> bool:
    return _URL_SCHEME.match(value.strip()) is not None


def load_image_bytes(value: str, settings: Settings) -> bytes:
    """The raw (still encoded) image, at most MAX_IMAGE_BYTES; ImageError naming `image`."""
    if not is_url(value):
        return decode_base64(value, settings.max_image_bytes)
    try:
        raw = urlsafety.fetch(
            value.strip(),
            max_bytes=settings.max_image_bytes,
            timeout=settings.image_fetch_timeout_seconds,
            allow_loopback=settings.allow_loopback_urls,
        )
    except urlsafety.UrlError as exc:
        raise ImageError(f"image: {exc}") from exc
    if not raw:
        raise ImageError("image: the URL returned an empty body")
    return raw
