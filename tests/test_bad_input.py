"""The bad-input corpus, through the real HTTP API: each request is answered with its
documented 4xx JSON error naming the field, and costs nothing (balance unchanged, no
job row). Also the inputs that must work: a data: URI, an image URL, alpha flattening
as stored in S3."""

from __future__ import annotations

import http.client
import json
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from common.db import session_scope
from common.images import check, normalise
from common.models import Job
from common.settings import Settings
from common.storage import get_storage
from tests.support import image_samples as samples
from tests.support.helpers import job_body
from tests.support.live import Stack
from tests.support.loopback_http import LoopbackServer, loopback_server, redirect, respond
from tests.support.reads import account_state

SUBMIT = "/v2/ssd-img2img"
CREDITS = 1000
MAX_SEED = 999_999_999_999_999


@pytest.fixture(scope="module")
def account(live_stack: Stack) -> tuple[str, str]:
    """One account for every refusal: each test checks it still has all its credits
    and no job, so a single charged refusal anywhere fails that test."""
    return live_stack.create_account(credits=CREDITS, name="bad-input")


@pytest.fixture(scope="module")
def image_server() -> Iterator[LoopbackServer]:
    with loopback_server() as server:
        yield server


def _stored_objects(account_id: str) -> list[str]:
    """The account's objects in S3 (inputs and outputs), read from the S3 server."""
    store = get_storage()
    return [
        key
        for prefix in (f"inputs/{account_id}/", f"outputs/{account_id}/")
        for page in store.list_pages(prefix)
        for key, _ in page
    ]


def _assert_refused_free(
    status: int, headers: Any, body: dict[str, Any], expected: int, field: str, account_id: str
) -> None:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert set(body) == {"error"}
    # The field starts the message or one of its "; "-separated parts.
    assert re.search(rf"(^|; ){field}(\.\w+)*:", body["error"]), body
    assert account_state(account_id) == (CREDITS, 0)
    assert _stored_objects(account_id) == []  # nothing stored either


def _post(live_stack: Stack, key: str, **kwargs: Any) -> tuple[int, Any, dict[str, Any]]:
    with live_stack.client(key) as client:
        response = client.post(SUBMIT, **kwargs)
    return response.status_code, response.headers, response.json()


# --- image payloads ----------------------------------------------------------------------

IMAGE_CASES: dict[str, tuple[str, str]] = {
    # name: (image field, a phrase of the error)
    "invalid base64": ("not base64 !!", "not valid base64"),
    "not an image": (samples.b64(b"hello world, not an image"), "not a JPEG, PNG or WebP"),
    "truncated JPEG": (samples.b64(samples.truncated_jpeg()), "truncated or corrupt"),
    "empty": ("", "at least 1 character"),
    "30000x30000 PNG header": (
        samples.b64(samples.png_claiming_size(30000, 30000)),
        "pixels",
    ),
    "animated GIF": (samples.b64(samples.animated_gif()), "format GIF is not supported"),
    "animated PNG": (samples.b64(samples.animated_png()), "animated images are not supported"),
    "CMYK JPEG": (samples.b64(samples.cmyk_jpeg()), "CMYK images are not supported"),
    "16-bit PNG": (samples.b64(samples.png_16bit_rgb()), "16-bit PNGs are not supported"),
    "16-bit grayscale PNG": (samples.b64(samples.png_16bit_gray()), "16-bit"),
    "too small": (samples.b64(samples.jpeg(200, 40)), "at least 64 pixels"),
    "data: URI of text": (
        "data:image/png;base64," + samples.b64(b"plain text"),
        "not a JPEG, PNG or WebP",
    ),
    "other URL scheme": ("ftp://images.example/a.png", "only http and https"),
    "file URL": ("file:///etc/passwd", "only http and https"),
    # Refused before any connection (common.urlsafety; unit tests prove no connect).
    "private URL": ("http://10.0.0.5/a.png", "a private address"),
    "metadata URL": ("http://169.254.169.254/latest/meta-data/", "link-local"),
    "IPv6 link-local URL": ("http://[fe80::1]/a.png", "link-local"),
    "IPv4-mapped metadata URL": ("http://[::ffff:169.254.169.254]/", "link-local"),
    "CGNAT URL": ("http://100.64.0.1/a.png", "carrier-grade NAT"),
    "URL with credentials": ("http://user:pw@images.example/a.png", "credentials"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_bad_images_are_400_naming_image_and_free(
    live_stack: Stack, account: tuple[str, str], case: str
) -> None:
    image, phrase = IMAGE_CASES[case]
    status, headers, body = _post(live_stack, account[1], json=job_body(image=image))
    _assert_refused_free(status, headers, body, 400, "image", account[0])
    assert phrase in body["error"]


def test_image_over_the_byte_limit_is_400(live_stack: Stack, account: tuple[str, str]) -> None:
    limit = Settings().max_image_bytes
    image = samples.b64(b"\xff" * (limit + 1024))  # within the body limit, over the image's
    status, headers, body = _post(live_stack, account[1], json=job_body(image=image))
    _assert_refused_free(status, headers, body, 400, "image", account[0])
    assert f"larger than the limit of {limit} bytes" in body["error"]


@pytest.mark.parametrize(
    ("path", "route", "phrase"),
    [
        ("/missing.png", None, "HTTP 404"),
        ("/text", respond(200, b"hello", {"Content-Type": "image/png"}), "not a JPEG"),
        ("/cmyk.jpg", respond(200, samples.cmyk_jpeg()), "CMYK"),
        ("/to-metadata", redirect("http://169.254.169.254/latest/meta-data/"), "link-local"),
        ("/to-private", redirect("http://192.168.0.10/a.png", 301), "a private address"),
        ("/empty", respond(200, b""), "empty body"),
    ],
)
def test_bad_image_urls_are_400_and_free(
    live_stack: Stack,
    account: tuple[str, str],
    image_server: LoopbackServer,
    path: str,
    route: Any,
    phrase: str,
) -> None:
    """The live stack runs with ALLOW_LOOPBACK_URLS, so the API reaches this loopback
    server; what it serves (or where it redirects) is refused."""
    if route is not None:
        image_server.routes[path] = route
    status, headers, body = _post(
        live_stack, account[1], json=job_body(image=image_server.url(path))
    )
    _assert_refused_free(status, headers, body, 400, "image", account[0])
    assert phrase in body["error"]


def test_image_url_over_the_byte_limit_is_400(
    live_stack: Stack, account: tuple[str, str], image_server: LoopbackServer
) -> None:
    limit = Settings().max_image_bytes
    image_server.routes["/huge.png"] = respond(200, b"\0" * (limit + 1))
    status, headers, body = _post(
        live_stack, account[1], json=job_body(image=image_server.url("/huge.png"))
    )
    _assert_refused_free(status, headers, body, 400, "image", account[0])
    assert f"larger than the limit of {limit} bytes" in body["error"]


# --- the other fields --------------------------------------------------------------------

FIELD_CASES: list[tuple[str, dict[str, Any]]] = [
    # missing required fields
    ("image", {"prompt": "a cat"}),
    ("prompt", {"image": samples.b64(samples.jpeg())}),
    ("prompt", job_body(prompt="")),
    # huge prompts
    ("prompt", job_body(prompt="x" * 2001)),
    ("negative_prompt", job_body(negative_prompt="x" * 2001)),
    # wrong JSON types
    ("image", job_body(image=12345)),
    ("prompt", job_body(prompt=["a", "cat"])),
    ("negative_prompt", job_body(negative_prompt={"no": "dogs"})),
    ("samples", job_body(samples="2")),
    ("samples", job_body(samples=1.5)),
    ("num_inference_steps", job_body(num_inference_steps="25")),
    ("guidance_scale", job_body(guidance_scale="high")),
    ("seed", job_body(seed="7")),
    ("strength", job_body(strength="a lot")),
    ("scheduler", job_body(scheduler=3)),
    # out of range, both ends
    ("samples", job_body(samples=0)),
    ("samples", job_body(samples=5)),
    ("num_inference_steps", job_body(num_inference_steps=19)),
    ("num_inference_steps", job_body(num_inference_steps=101)),
    ("guidance_scale", job_body(guidance_scale=0.5)),
    ("guidance_scale", job_body(guidance_scale=25.5)),
    ("seed", job_body(seed=-2)),
    ("seed", job_body(seed=MAX_SEED + 1)),
    ("strength", job_body(strength=-0.1)),
    ("strength", job_body(strength=1.0)),
    ("strength", job_body(strength=0.01)),  # int(20 × 0.01) == 0 denoising steps
    # unknown scheduler
    ("scheduler", job_body(scheduler="Fastest")),
    ("scheduler", job_body(scheduler="euler")),  # names are case-sensitive, as Segmind's
]


@pytest.mark.parametrize(
    ("field", "body"), FIELD_CASES, ids=[f"{i}-{field}" for i, (field, _) in enumerate(FIELD_CASES)]
)
def test_bad_fields_are_400_naming_the_field_and_free(
    live_stack: Stack, account: tuple[str, str], field: str, body: dict[str, Any]
) -> None:
    status, headers, answer = _post(live_stack, account[1], json=body)
    _assert_refused_free(status, headers, answer, 400, field, account[0])


# --- text PostgreSQL cannot store: NUL, lone surrogates ------------------------------------

# As raw JSON, since a lone surrogate cannot be encoded by a client's JSON library.
UNSTORABLE_CASES: list[tuple[str, str, str]] = [
    # (field, JSON text of its value, a phrase of the error)
    ("prompt", '"a cat\\u0000"', "nul"),
    ("prompt", '"a \\ud800 cat"', "unicode"),
    ("negative_prompt", '"dogs\\u0000"', "nul"),
    ("negative_prompt", '"\\udfff"', "unicode"),
    ("image", '"http://images.example/a.png\\u0000"', "nul"),
    ("webhook_url", '"https://hooks.example/\\u0000"', "nul"),
]


@pytest.mark.parametrize("path", [SUBMIT, "/v1/ssd-img2img"])
@pytest.mark.parametrize(
    ("field", "value", "phrase"),
    UNSTORABLE_CASES,
    ids=[f"{field}-{phrase}" for field, _, phrase in UNSTORABLE_CASES],
)
def test_unstorable_text_is_400_naming_the_field_and_free(
    live_stack: Stack, account: tuple[str, str], path: str, field: str, value: str, phrase: str
) -> None:
    body = {k: v for k, v in job_body().items() if k != field}
    content = json.dumps(body)[:-1] + f', "{field}": {value}}}'
    with live_stack.client(account[1]) as client:
        response = client.post(
            path, content=content.encode(), headers={"content-type": "application/json"}
        )
    _assert_refused_free(
        response.status_code, response.headers, response.json(), 400, field, account[0]
    )
    assert phrase in response.json()["error"].lower()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/accounts", '{"name": "acme\\u0000"}'),
        ("/admin/accounts", '{"name": "\\ud83d"}'),
        ("/admin/accounts", '{"name": "\\udfff"}'),
        ("/v2/webhooks", '{"url": "https://hooks.example/x", "description": "a\\u0000"}'),
    ],
)
def test_unstorable_text_in_admin_and_webhook_bodies_is_400(
    live_stack: Stack, account: tuple[str, str], path: str, body: str
) -> None:
    headers = {"content-type": "application/json", "x-api-key": account[1]}
    headers["authorization"] = f"Bearer {live_stack.env['ADMIN_TOKEN']}"
    with httpx.Client(base_url=live_stack.api_url, timeout=60) as client:
        response = client.post(path, content=body.encode(), headers=headers)
    assert response.status_code == 400, response.text
    # Ours ("must not contain NUL", "must be valid Unicode") or pydantic's own refusal of
    # some lone surrogates ("unable to parse raw data as a unicode string").
    error = response.json()["error"]
    assert re.match(r"(name|description): .*(NUL|[Uu]nicode)", error), error


@pytest.mark.parametrize("content", [b"[1, 2, 3]", b"null", b'"image"', b"{not json"])
def test_bodies_that_are_not_an_object_are_400(
    live_stack: Stack, account: tuple[str, str], content: bytes
) -> None:
    status, headers, body = _post(
        live_stack, account[1], content=content, headers={"content-type": "application/json"}
    )
    _assert_refused_free(status, headers, body, 400, "body", account[0])


# --- oversized bodies: 413 before the body is read -----------------------------------------


def _raw_submit(api_url: str, key: str, headers: dict[str, str], chunks: list[bytes]) -> Any:
    """POST over a plain socket, so the test controls exactly what is sent: headers that
    announce more than is sent, or a chunked body without a declared length."""
    url = urlsplit(api_url)
    assert url.hostname and url.port
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    head = {"Host": url.netloc, "x-api-key": key, "Content-Type": "application/json", **headers}
    lines = [f"POST {SUBMIT} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode())
    for chunk in chunks:
        sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response


def test_oversized_content_length_is_413_before_reading(
    live_stack: Stack, account: tuple[str, str]
) -> None:
    """Only the headers are sent: the answer cannot depend on reading the body."""
    limit = Settings().request_body_limit
    response = _raw_submit(live_stack.api_url, account[1], {"Content-Length": str(limit + 1)}, [])
    body = response.read()
    assert response.status == 413
    assert response.getheader("content-type") == "application/json"
    assert f"larger than the limit of {limit} bytes" in body.decode()
    assert account_state(account[0]) == (CREDITS, 0)


def test_oversized_chunked_body_is_413_while_streaming(
    live_stack: Stack, account: tuple[str, str]
) -> None:
    """No Content-Length: the limit is enforced on the bytes as they arrive. Exactly one
    byte over the limit is sent (no final chunk), so the refusal must come mid-body."""
    limit = Settings().request_body_limit
    total = limit + 1
    prefix = b'{"prompt": "x", "image": "'
    payload = prefix + b"A" * (total - len(prefix))
    chunks = [payload[i : i + 1024 * 1024] for i in range(0, total, 1024 * 1024)]
    response = _raw_submit(live_stack.api_url, account[1], {"Transfer-Encoding": "chunked"}, chunks)
    body = response.read()
    assert response.status == 413, body
    assert response.getheader("content-type") == "application/json"
    assert f"larger than the limit of {limit} bytes" in body.decode()
    assert account_state(account[0]) == (CREDITS, 0)


# --- what must work ----------------------------------------------------------------------


def _stored_bytes(job_id: str) -> tuple[bytes, dict[str, Any]]:
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        key, params = job.input_key, dict(job.params)
    return get_storage().get(key), params


def _stored_input(job_id: str) -> Image.Image:
    """The job's input as its worker will run it: stored as received, then normalised
    (common/images.py)."""
    raw, params = _stored_bytes(job_id)
    return normalise(raw, params["width"], params["height"])


def test_data_uri_is_accepted_and_charged(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=CREDITS)
    image = "data:image/jpeg;base64," + samples.b64(samples.jpeg(120, 90))
    status, _, body = _post(live_stack, key, json=job_body(image=image, num_inference_steps=20))
    assert status == 200, body
    assert account_state(account_id) == (CREDITS - 20, 1)
    assert _stored_input(body["request_id"]).size == (120, 88)


def test_image_url_is_fetched_and_prepared_like_base64(
    live_stack: Stack, image_server: LoopbackServer
) -> None:
    account_id, key = live_stack.create_account(credits=CREDITS)
    raw = samples.jpeg(150, 100)
    image_server.routes["/photo.jpg"] = respond(200, raw, {"Content-Type": "image/jpeg"})
    image_server.routes["/moved"] = redirect("/photo.jpg", 302)
    status, _, body = _post(live_stack, key, json=job_body(image=image_server.url("/moved")))
    assert status == 200, body
    assert account_state(account_id) == (CREDITS - 20, 1)
    stored, params = _stored_bytes(body["request_id"])
    assert stored == raw  # kept as received, like a base64 image
    expected = check(raw, max_pixels=Settings().max_image_pixels, max_side=1024)
    assert (params["width"], params["height"]) == (expected.width, expected.height) == (144, 96)


def test_alpha_is_flattened_on_white_in_the_stored_input(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=CREDITS)
    status, _, body = _post(
        live_stack, key, json=job_body(image=samples.b64(samples.transparent_png()))
    )
    assert status == 200, body
    stored = _stored_input(body["request_id"])
    assert stored.mode == "RGB"
    assert stored.getpixel((50, 50)) == (255, 255, 255)  # was transparent
    assert stored.getpixel((5, 5)) == (255, 0, 0)  # was opaque red


def test_exif_orientation_is_applied_in_the_stored_input(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=CREDITS)
    image = samples.b64(samples.jpeg_with_orientation(100, 200, orientation=6))
    status, _, body = _post(live_stack, key, json=job_body(image=image))
    assert status == 200, body
    assert _stored_input(body["request_id"]).size == (200, 96)


def test_grayscale_is_accepted(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=CREDITS)
    status, _, body = _post(
        live_stack, key, json=job_body(image=samples.b64(samples.grayscale_png()))
    )
    assert status == 200, body
    assert _stored_input(body["request_id"]).getpixel((10, 10)) == (128, 128, 128)
