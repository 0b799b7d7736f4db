"""The tenant's web console at `/console`: three static files shipped in the package (no
CDN, no build step) that call this API from the browser with the tenant's key.

The pages get a Content-Security-Policy that allows scripts, styles and calls from this
origin only (no inline script or style, no eval), images from this origin and the
`blob:` URLs of fetched outputs, and no framing; the key lives in the tab's
sessionStorage, never in a cookie or a URL (docs/api.md "Web console")."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

STATIC = Path(__file__).parent / "static"
MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # A new release's files are fetched again rather than mixed with cached old ones.
    "cache-control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def _content(name: str) -> bytes:
    """Read once per process: the files change only with a release."""
    return (STATIC / name).read_bytes()


def _file(name: str) -> Response:
    return Response(_content(name), media_type=MEDIA_TYPES[name], headers=HEADERS)


@router.get("/console")
def console_page() -> Response:
    return _file("index.html")


@router.get("/console/{name}")
def console_file(name: str) -> Response:
    if name not in MEDIA_TYPES:
        return JSONResponse({"error": f"no console file {name!r}"}, status_code=404)
    return _file(name)
