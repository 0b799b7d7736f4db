"""Segmind's synchronous v1 endpoint: the call blocks and answers with the image."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from segmind import InferenceFailed, SegmindClient, SegmindError

from common import jobs
from common.db import session_scope
from common.storage import get_storage
from tests.support.extra_api import HeldApi, held_api, queued_job_ids, run_on_the_workers
from tests.support.helpers import image_b64, job_body, wait_terminal
from tests.support.live import Stack

V1 = "/v1/ssd-img2img"


@pytest.fixture(scope="module")
def patient_api(live_stack: Stack) -> Iterator[HeldApi]:
    # Long wait, frequent re-check: the lost-notification test relies on the re-check.
    with held_api(
        live_stack, "patient", SYNC_WAIT_TIMEOUT_SECONDS="600", SYNC_WAIT_RECHECK_SECONDS="0.5"
    ) as api:
        yield api


@pytest.fixture(scope="module")
def impatient_api(live_stack: Stack) -> Iterator[HeldApi]:
    with held_api(live_stack, "impatient", SYNC_WAIT_TIMEOUT_SECONDS="1") as api:
        yield api


def _jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image


def test_base64_false_answers_jpeg_bytes(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=500)
    body = job_body(image=image_b64(203, 139), samples=2, base64=False)
    with live_stack.client(key) as client:
        response = client.post(V1, json=body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/jpeg"
        assert _jpeg(response.content).size == (200, 136)
        assert response.headers["x-remaining-credits"] == str(500 - 2 * 20)

        # An ordinary job underneath, visible through v2; the other sample is there.
        request_id = response.headers["x-request-id"]
        status = client.get(response.headers["x-status-url"])
        assert status.json()["status"] == "COMPLETED"
        assert status.json()["request_id"] == request_id
        result = client.get(response.headers["x-response-url"]).json()
    assert len(result["output"]) == 2
    first = httpx.get(result["output"][0], timeout=30).content
    assert first == response.content


def test_base64_true_is_the_default_and_answers_json(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=500)
    body = job_body(samples=2, seed=-1)
    body.pop("base64", None)
    with live_stack.client(key) as client:
        response = client.post(V1, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["status"] == "COMPLETED"
    assert data["request_id"] == response.headers["x-request-id"]
    assert 0 <= data["seed"] <= 999_999_999_999_999  # -1 resolved and returned
    assert data["metrics"]["inference_time"] > 0
    assert data["image"] == data["images"][0]
    images = [_jpeg(base64.b64decode(item)) for item in data["images"]]
    assert [image.size for image in images] == [(96, 80), (96, 80)]
    assert images[0].tobytes() != images[1].tobytes()  # sample i uses seed + i


def test_same_seed_as_v2_gives_the_same_image(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=500)
    with live_stack.client(key) as client:
        sync = client.post(V1, json=job_body(seed=4242, base64=False))
        assert sync.status_code == 200, sync.text
        submitted = client.post("/v2/ssd-img2img", json=job_body(seed=4242)).json()
        assert wait_terminal(client, submitted["status_url"])["status"] == "COMPLETED"
        url = client.get(submitted["response_url"]).json()["output"][0]
    assert httpx.get(url, timeout=30).content == sync.content


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x"}, "image"),
        (job_body(samples=5), "samples"),
        (job_body(strength=0.01), "strength"),
        (job_body(base64="maybe"), "base64"),
    ],
)
def test_invalid_fields_are_400_and_free(live_stack: Stack, body: dict, field: str) -> None:
    _, key = live_stack.create_account(credits=100)
    with live_stack.client(key) as client:
        response = client.post(V1, json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    assert response.headers["x-remaining-credits"] == "100"


def test_auth_and_credit_errors(live_stack: Stack) -> None:
    for headers in ({}, {"x-api-key": "sk_wrong"}):
        response = httpx.post(f"{live_stack.api_url}{V1}", json=job_body(), headers=headers)
        assert response.status_code == 401
        assert "API key" in response.json()["error"]
    _, key = live_stack.create_account(credits=19)
    with live_stack.client(key) as client:
        response = client.post(V1, json=job_body())
    assert response.status_code == 406
    assert "credits" in response.json()["error"]
    assert response.headers["x-remaining-credits"] == "19"
    assert "x-request-id" not in response.headers  # refused: no job exists


def test_failed_job_is_422_with_its_error_and_refunded(
    live_stack: Stack, patient_api: HeldApi
) -> None:
    account_id, key = live_stack.create_account(credits=100)
    before = patient_api.queued_messages()
    with (
        httpx.Client(base_url=patient_api.url, headers={"x-api-key": key}, timeout=120) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(client.post, V1, json=job_body(base64=False))
        patient_api.wait_messages(before + 1)  # the request waits for its job now
        (job_id,) = queued_job_ids(account_id)
        _fail_on_the_worker(job_id)
        response = pending.result()
    assert response.status_code == 422, response.text
    assert response.headers["x-request-id"] == str(job_id)
    error = response.json()["error"]
    assert str(job_id) in error and "reading the input image failed (error id err_" in error
    assert response.json()["status"] == "FAILED"
    assert response.headers["x-remaining-credits"] == "100"  # refunded, and the header says so


def _fail_on_the_worker(job_id: uuid.UUID) -> None:
    """Let the real worker run the job and fail: its input is no longer an image."""
    with session_scope() as session:
        job = jobs.get_job(session, job_id)
        assert job is not None
        get_storage().put(job.input_key, b"not an image", "image/png")
    run_on_the_workers([job_id])


def test_the_sdk_raises_the_jobs_error_on_v1_and_v2(
    live_stack: Stack, patient_api: HeldApi
) -> None:
    account_id, key = live_stack.create_account(credits=100)
    client = SegmindClient(api_key=key, base_url=f"{patient_api.url}/v1", timeout=120)
    before = patient_api.queued_messages()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.run_sync, "ssd-img2img", **job_body(base64=False))
        patient_api.wait_messages(before + 1)
        (job_id,) = queued_job_ids(account_id)
        _fail_on_the_worker(job_id)
        with pytest.raises(SegmindError) as raised:
            pending.result()
    assert raised.value.status == 422
    assert raised.value.detail is not None and "failed (error id err_" in raised.value.detail

    handle = client.submit_async("ssd-img2img", **job_body())
    _fail_on_the_worker(uuid.UUID(handle.request_id))
    with pytest.raises(InferenceFailed) as failed:
        handle.wait(timeout=120, interval=0.2)
    assert failed.value.detail is not None and "failed (error id err_" in failed.value.detail


def test_lost_notification_is_covered_by_the_recheck(
    live_stack: Stack, patient_api: HeldApi
) -> None:
    account_id, key = live_stack.create_account(credits=100)
    before = patient_api.queued_messages()
    with (
        httpx.Client(base_url=patient_api.url, headers={"x-api-key": key}, timeout=120) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(client.post, V1, json=job_body())
        patient_api.wait_messages(before + 1)
        (job_id,) = queued_job_ids(account_id)
        # Finished without any notification, as when a worker cannot reach Redis.
        with session_scope() as session:
            assert jobs.fail(session, job_id, "stopped by the test")
        response = pending.result()
    assert response.status_code == 422, response.text
    assert "stopped by the test" in response.json()["error"]


def test_timeout_is_504_naming_the_request_and_the_job_goes_on(
    live_stack: Stack, impatient_api: HeldApi
) -> None:
    account_id, key = live_stack.create_account(credits=100)
    with httpx.Client(base_url=impatient_api.url, headers={"x-api-key": key}) as client:
        response = client.post(V1, json=job_body(), timeout=60)
        assert response.status_code == 504, response.text
        request_id = response.headers["x-request-id"]
        status_url = response.headers["x-status-url"]
        error = response.json()["error"]
        assert request_id in error and status_url in error
        assert response.headers["x-remaining-credits"] == "80"  # charged: the job runs on
        status = client.get(status_url)
    assert status.status_code == 200
    assert status.json()["status"] == "QUEUED"
    # Nobody consumes that queue: end the job so it does not linger as QUEUED.
    with session_scope() as session:
        assert jobs.fail(session, uuid.UUID(request_id), "cleaned up by the test")
    assert queued_job_ids(account_id) == []
