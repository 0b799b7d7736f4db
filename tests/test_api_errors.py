"""Malformed requests get a 4xx JSON error, never a 500, and are never charged."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from common.db import session_scope
from common.models import Job
from tests.support.helpers import job_body
from tests.support.live import Stack


@pytest.fixture
def account(live_stack: Stack) -> str:
    return live_stack.create_account(credits=100)[1]


def _balance(live_stack: Stack, key: str) -> int:
    with live_stack.client(key) as client:
        response = client.get("/v2/requests/00000000-0000-0000-0000-000000000000/status")
    return int(response.headers["x-remaining-credits"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x"}, "image"),
        (job_body(image="not base64 !!"), "image"),
        (job_body(image="aGVsbG8gd29ybGQ="), "image"),  # "hello world": not an image
        (job_body(samples=5), "samples"),
        (job_body(samples="2"), "samples"),
        (job_body(num_inference_steps=10), "num_inference_steps"),
        (job_body(scheduler="Fastest"), "scheduler"),
        (job_body(strength=1.5), "strength"),
        (job_body(guidance_scale=30), "guidance_scale"),
        (job_body(seed=-2), "seed"),
        (job_body(strength=0.01), "strength"),  # int(20 * 0.01) == 0 denoising steps
        (job_body(prompt=""), "prompt"),
    ],
)
def test_bad_fields_are_400_and_free(
    live_stack: Stack, account: str, body: dict, field: str
) -> None:
    with live_stack.client(account) as client:
        response = client.post("/v2/ssd-img2img", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert field in response.json()["error"]
    assert _balance(live_stack, account) == 100


def test_invalid_json(live_stack: Stack, account: str) -> None:
    with live_stack.client(account) as client:
        response = client.post(
            "/v2/ssd-img2img", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def test_missing_and_wrong_key(live_stack: Stack) -> None:
    for headers in ({}, {"x-api-key": "sk_wrong"}):
        with live_stack.client() as client:
            response = client.post("/v2/ssd-img2img", json=job_body(), headers=headers)
        assert response.status_code == 401
        assert "API key" in response.json()["error"]


def test_not_enough_credits_is_406_without_job(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=39)
    with live_stack.client(key) as client:
        response = client.post("/v2/ssd-img2img", json=job_body(samples=2, num_inference_steps=20))
    assert response.status_code == 406
    assert "costs 40" in response.json()["error"] and "39" in response.json()["error"]
    assert _balance(live_stack, key) == 39
    with session_scope() as session:
        jobs = session.execute(
            select(func.count()).select_from(Job).where(Job.account_id == uuid.UUID(account_id))
        ).scalar_one()
    assert jobs == 0


def test_unknown_path_and_method_are_json(live_stack: Stack) -> None:
    with live_stack.client() as client:
        missing = client.get("/v2/nothing-here")
        wrong_method = client.get("/v2/ssd-img2img")
    assert missing.status_code == 404 and missing.json() == {"error": "not found"}
    assert wrong_method.status_code == 405 and wrong_method.json() == {
        "error": "method not allowed"
    }
