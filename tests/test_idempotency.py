"""`Idempotency-Key` on submit (v2 and v1): a repeated submit answers the original
request and is charged once; a reused key with another body is refused; keys are per
account; concurrent duplicates make one job."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import func, select

from common.db import session_scope
from common.models import CreditLedgerEntry, Job, LedgerReason
from common.settings import get_settings
from tests.support.helpers import job_body, wait_terminal
from tests.support.live import Stack

COST = 20  # job_body(): 1 sample × 20 steps
REPLAYED = "idempotent-replayed"


def submit(client: httpx.Client, body: dict[str, Any], key: str | None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v2/ssd-img2img", json=body, headers=headers)


def debits(account_id: str) -> int:
    with session_scope() as session:
        return session.execute(
            select(func.count())
            .select_from(CreditLedgerEntry)
            .where(
                CreditLedgerEntry.account_id == uuid.UUID(account_id),
                CreditLedgerEntry.reason == LedgerReason.JOB_DEBIT,
            )
        ).scalar_one()


def jobs_of(account_id: str) -> int:
    with session_scope() as session:
        return session.execute(
            select(func.count()).select_from(Job).where(Job.account_id == uuid.UUID(account_id))
        ).scalar_one()


def new_key() -> str:
    return f"order-{uuid.uuid4()}"


def test_same_key_and_body_answers_the_original_request_charged_once(live_stack: Stack) -> None:
    account_id, api_key = live_stack.create_account(credits=100)
    key = new_key()
    body = job_body()
    with live_stack.client(api_key) as client:
        first = submit(client, body, key)
        assert first.status_code == 200, first.text
        assert REPLAYED not in first.headers
        # The same request, its fields in another order and a default spelled out.
        again = submit(client, {**dict(reversed(list(body.items()))), "guidance_scale": 7.5}, key)
        assert again.status_code == 200, again.text
        assert again.headers[REPLAYED] == "true"
        assert again.json()["request_id"] == first.json()["request_id"]
        assert again.headers["x-remaining-credits"] == first.headers["x-remaining-credits"] == "80"
        final = wait_terminal(client, first.json()["status_url"])
        assert final["status"] == "COMPLETED"
        # After the job ended too: the same request, its current status, no new job.
        late = submit(client, body, key)
        assert late.json()["request_id"] == first.json()["request_id"]
        assert late.json()["status"] == "COMPLETED"
    assert debits(account_id) == 1
    assert jobs_of(account_id) == 1


def test_same_key_with_another_body_is_refused_uncharged(live_stack: Stack) -> None:
    account_id, api_key = live_stack.create_account(credits=100)
    key = new_key()
    with live_stack.client(api_key) as client:
        first = submit(client, job_body(), key)
        assert first.status_code == 200
        other = submit(client, job_body(prompt="something else entirely"), key)
        assert other.status_code == 422, other.text
        error = other.json()["error"]
        assert "Idempotency-Key" in error and first.json()["request_id"] in error
        assert other.headers["x-remaining-credits"] == "80"
    assert debits(account_id) == 1


def test_keys_are_scoped_per_account(live_stack: Stack) -> None:
    key = new_key()
    ids = []
    for _ in range(2):
        _, api_key = live_stack.create_account(credits=100)
        with live_stack.client(api_key) as client:
            response = submit(client, job_body(), key)
        assert response.status_code == 200
        assert REPLAYED not in response.headers
        ids.append(response.json()["request_id"])
    assert ids[0] != ids[1]


def test_invalid_keys_are_refused_with_400(live_stack: Stack) -> None:
    account_id, api_key = live_stack.create_account(credits=100)
    with live_stack.client(api_key) as client:
        for bad in ("", "has space", "x" * 256, "tab\tinside"):
            response = submit(client, job_body(), bad)
            assert response.status_code == 400, (bad, response.text)
            assert "Idempotency-Key" in response.json()["error"]
    assert debits(account_id) == 0


def test_replay_is_never_refused_and_refusals_store_no_key(live_stack: Stack) -> None:
    account_id, api_key = live_stack.create_account(credits=COST)
    key, broke = new_key(), new_key()
    with live_stack.client(api_key) as client:
        assert submit(client, job_body(), key).status_code == 200  # balance now 0
        replay = submit(client, job_body(), key)
        assert replay.status_code == 200  # not 406: nothing new is charged
        assert replay.headers[REPLAYED] == "true"
        refused = submit(client, job_body(), broke)
        assert refused.status_code == 406
        with live_stack.admin() as admin:
            grant = admin.post(
                f"/accounts/{account_id}/credits", json={"amount": COST, "reason": "grant"}
            )
            assert grant.status_code == 200, grant.text
        # The refused submit left nothing behind: the same key now makes a job.
        accepted = submit(client, job_body(), broke)
        assert accepted.status_code == 200
        assert REPLAYED not in accepted.headers
    assert debits(account_id) == 2


def test_concurrent_duplicates_make_one_job(live_stack: Stack) -> None:
    account_id, api_key = live_stack.create_account(credits=1000)
    key, body = new_key(), job_body()

    def send(_: int) -> httpx.Response:
        with live_stack.client(api_key) as client:
            return submit(client, body, key)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(send, range(8)))

    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert sum(REPLAYED not in r.headers for r in responses) == 1  # one created it
    assert debits(account_id) == 1
    assert jobs_of(account_id) == 1


def test_v1_replay_answers_the_same_job(live_stack: Stack) -> None:
    account_id, api_key = live_stack.create_account(credits=100)
    key, body = new_key(), job_body(base64=False)
    headers = {"Idempotency-Key": key}
    with live_stack.client(api_key) as client:
        first = client.post("/v1/ssd-img2img", json=body, headers=headers)
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "image/jpeg"
        again = client.post("/v1/ssd-img2img", json=body, headers=headers)
        assert again.status_code == 200, again.text
        assert again.headers[REPLAYED] == "true"
        assert again.headers["x-request-id"] == first.headers["x-request-id"]
        assert again.content == first.content
        # The key is the account's, whichever endpoint: v2 answers the same request.
        via_v2 = submit(client, body, key)
        assert via_v2.json()["request_id"] == first.headers["x-request-id"]
    assert debits(account_id) == 1


def test_v1_replay_after_retention_is_410_not_a_dead_link(live_stack: Stack) -> None:
    _, api_key = live_stack.create_account(credits=100)
    key, body = new_key(), job_body(base64=False)
    headers = {"Idempotency-Key": key}
    with live_stack.client(api_key) as client:
        first = client.post("/v1/ssd-img2img", json=body, headers=headers)
        assert first.status_code == 200, first.text
        request_id = first.headers["x-request-id"]
        retention = get_settings().result_retention_seconds  # the API's too
        with session_scope() as session:  # as if the retention period were over
            job = session.get(Job, uuid.UUID(request_id))
            assert job is not None
            job.finished_at = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, retention + 1)
        again = client.post("/v1/ssd-img2img", json=body, headers=headers)
    assert again.status_code == 410, again.text
    assert again.json()["request_id"] == request_id and "expired" in again.json()["error"]
    assert again.headers["x-request-id"] == request_id
    assert again.headers[REPLAYED] == "true"
