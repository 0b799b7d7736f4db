"""Segmind's official Python SDK (`segmind` on PyPI), unchanged, against this service:
only its base URL and API key differ from a client of Segmind's hosted API."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image
from segmind import SegmindClient, SegmindError

from tests.support.helpers import image_b64, job_body
from tests.support.live import Stack

SLUG = "ssd-img2img"


def sdk(live_stack: Stack, key: str | None) -> SegmindClient:
    return SegmindClient(api_key=key, base_url=f"{live_stack.api_url}/v1", timeout=120)


def _jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image


def test_run_sync_jpeg_bytes(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=100)
    response = sdk(live_stack, key).run_sync(
        SLUG, **job_body(image=image_b64(203, 139), base64=False)
    )
    assert response.headers["content-type"] == "image/jpeg"
    assert _jpeg(response.content).size == (200, 136)
    assert response.headers["x-remaining-credits"] == "80"


def test_run_sync_base64_json(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=100)
    response = sdk(live_stack, key).run_sync(SLUG, **job_body(base64=True, seed=99))
    data = response.json()
    assert data["seed"] == 99
    assert _jpeg(base64.b64decode(data["image"])).size == (96, 80)


def _check_completed(body: dict[str, Any], samples: int) -> None:
    assert body["status"] == "COMPLETED"
    assert body["metrics"]["inference_time"] > 0
    assert len(body["output"]) == samples
    for url in body["output"]:
        assert _jpeg(httpx.get(url, timeout=30).content).size == (96, 80)


def test_submit_async_then_wait(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=100)
    job = sdk(live_stack, key).submit_async(SLUG, **job_body(samples=2))
    assert job.submit_response["status"] == "QUEUED"
    body = job.wait(timeout=120, interval=0.2)
    _check_completed(body, samples=2)
    assert body["request_id"] == job.request_id


def test_run_submits_and_polls(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=100)
    _check_completed(sdk(live_stack, key).run(SLUG, **job_body()), samples=1)


Call = Callable[[SegmindClient, dict[str, Any]], object]
CALLS: dict[str, Call] = {
    "run_sync": lambda client, body: client.run_sync(SLUG, **body),
    "submit_async": lambda client, body: client.submit_async(SLUG, **body),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_errors_reach_the_sdk_with_status_and_message(
    live_stack: Stack, monkeypatch: pytest.MonkeyPatch, call: Call
) -> None:
    monkeypatch.delenv("SEGMIND_API_KEY", raising=False)
    _, key = live_stack.create_account(credits=30)
    cases: list[tuple[str | None, dict[str, Any], int, str]] = [
        (None, job_body(), 401, "API key"),
        ("sk_not_a_key", job_body(), 401, "invalid API key"),
        (key, job_body(samples=9), 400, "samples"),
        (key, job_body(scheduler="Fastest"), 400, "scheduler"),
        (key, job_body(samples=2), 406, "credits"),  # 40 credits, 30 left
    ]
    for api_key, body, status, message in cases:
        with pytest.raises(SegmindError) as raised:
            call(sdk(live_stack, api_key), body)
        assert raised.value.status == status, raised.value
        assert raised.value.detail is not None and message in raised.value.detail
    # None of those cost anything.
    response = sdk(live_stack, key).run_sync(SLUG, **job_body(base64=False))
    assert response.headers["x-remaining-credits"] == "10"
