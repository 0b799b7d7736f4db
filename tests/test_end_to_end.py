"""A job from HTTP to JPEGs in S3, through a real Celery worker running the tiny model."""

from __future__ import annotations

import io
import uuid

import httpx
from PIL import Image
from sqlalchemy import func, select

from common.db import session_scope
from common.models import CreditLedgerEntry, Job
from tests.support.helpers import image_b64, job_body, wait_terminal
from tests.support.live import Stack


def test_submit_poll_fetch_jpegs(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=500)
    # 203x139 -> floored to multiples of 8 -> 200x136: the documented output size.
    body = job_body(image=image_b64(203, 139), samples=2, num_inference_steps=25, seed=-1)
    with live_stack.client(key) as client:
        submitted = client.post("/v2/ssd-img2img", json=body)
        assert submitted.status_code == 200, submitted.text
        data = submitted.json()
        assert data["status"] == "QUEUED"
        assert set(data) >= {"request_id", "status_url", "response_url", "poll_url"}
        assert submitted.headers["x-remaining-credits"] == str(500 - 2 * 25)

        assert wait_terminal(client, data["status_url"])["status"] == "COMPLETED"
        result = client.get(data["response_url"])
        assert result.status_code == 200
        payload = result.json()

    assert payload["status"] == "COMPLETED"
    assert 0 <= payload["seed"] <= 999_999_999_999_999  # -1 was resolved and recorded
    assert payload["metrics"]["inference_time"] > 0
    assert payload["metrics"]["queue_time"] >= 0
    assert len(payload["output"]) == 2
    images = []
    for url in payload["output"]:
        fetched = httpx.get(url, timeout=30)  # a presigned URL: no API key needed
        assert fetched.status_code == 200
        image = Image.open(io.BytesIO(fetched.content))
        assert image.format == "JPEG"
        assert image.size == (200, 136)
        images.append(image.tobytes())
    assert images[0] != images[1]  # sample i uses seed + i

    with session_scope() as session:
        job = session.get(Job, uuid.UUID(payload["request_id"]))
        assert job is not None and job.seed == payload["seed"]
        assert job.attempts == 1
        ledger_sum = session.execute(
            select(func.sum(CreditLedgerEntry.amount)).where(
                CreditLedgerEntry.account_id == account_id
            )
        ).scalar_one()
    assert ledger_sum == 500 - 50


def test_same_seed_same_images(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=200)
    outputs = []
    with live_stack.client(key) as client:
        for _ in range(2):
            data = client.post("/v2/ssd-img2img", json=job_body(seed=1234)).json()
            wait_terminal(client, data["status_url"])
            url = client.get(data["response_url"]).json()["output"][0]
            outputs.append(Image.open(io.BytesIO(httpx.get(url).content)).tobytes())
    assert outputs[0] == outputs[1]


def test_other_tenant_cannot_see_job(live_stack: Stack) -> None:
    _, owner = live_stack.create_account(credits=100)
    _, other = live_stack.create_account(credits=100)
    with live_stack.client(owner) as client:
        data = client.post("/v2/ssd-img2img", json=job_body()).json()
    with live_stack.client(other) as client:
        for url in (data["status_url"], data["response_url"]):
            response = client.get(url)
            assert response.status_code == 404
            assert response.json() == {"error": "request not found"}
