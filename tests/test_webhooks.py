"""Signed webhooks end to end: the real API, GPU worker and CPU worker send to a real
receiver on loopback, which checks every signature with the `standardwebhooks` library.

The test stack retries within fractions of a second (WEBHOOK_RETRY_SCHEDULE_SECONDS in
tests/conftest.py: five retries of at most 0.2 s); production waits about a day.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook, WebhookVerificationError

from common import jobs
from common.db import session_scope
from common.models import (
    Job,
    JobStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEventType,
)
from common.settings import get_settings
from common.webhooks import delivery as webhook_delivery
from common.webhooks import manage
from common.webhooks.events import iso_now, maybe_record_progress_event, record_job_event
from common.webhooks.queue import send_now
from common.webhooks.signing import new_webhook_id
from tests.support.helpers import insert_job, job_body, wait_terminal
from tests.support.live import Stack
from tests.support.waiting import wait_until
from tests.support.webhook_receiver import Answer, Receiver, webhook_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as server:
        yield server


@pytest.fixture
def tenant(live_stack: Stack) -> Iterator[tuple[str, httpx.Client]]:
    account_id, key = live_stack.create_account(credits=100_000, name="webhooks")
    with live_stack.client(key) as client:
        yield account_id, client


def secret_of(client: httpx.Client) -> str:
    response = client.get("/v2/webhooks/secret")
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


def submit(client: httpx.Client, **overrides: Any) -> str:
    response = client.post("/v2/ssd-img2img", json=job_body(**overrides))
    assert response.status_code == 200, response.text
    request_id: str = response.json()["request_id"]
    wait_terminal(client, f"/v2/requests/{request_id}/status")
    return request_id


def deliveries(client: httpx.Client, **query: str) -> list[dict[str, Any]]:
    response = client.get("/v2/webhooks/deliveries", params=query)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


def settled(client: httpx.Client, count: int, **query: str) -> list[dict[str, Any]]:
    """The deliveries matching `query` once there are `count` and none is pending."""

    def done() -> list[dict[str, Any]] | None:
        found = deliveries(client, **query)
        if len(found) == count and all(d["state"] != "pending" for d in found):
            return found
        return None

    found: list[dict[str, Any]] = wait_until(done, f"{count} settled deliveries")
    return found


def create_endpoint(client: httpx.Client, url: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v2/webhooks", json={"url": url, **body})
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


def insert_delivery(
    account_id: str, job_id: uuid.UUID, url: str, *, dispatched: bool = False
) -> uuid.UUID:
    """A due delivery written straight to PostgreSQL, with no message queued (or, with
    `dispatched`, one "queued" that Redis lost): only the sweep can find it."""
    delivery_id = uuid.uuid4()
    with session_scope() as session:
        session.add(
            WebhookDelivery(
                id=delivery_id,
                account_id=uuid.UUID(account_id),
                job_id=job_id,
                url=url,
                event_type=WebhookEventType.COMPLETED,
                webhook_id=new_webhook_id(),
                payload={
                    "type": "job.completed",
                    "timestamp": iso_now(),
                    "data": {"request_id": str(job_id), "status": "FAILED", "output": None},
                },
                state=WebhookDeliveryState.PENDING,
                next_attempt_at=func.now(),
                dispatched_at=func.now() if dispatched else None,
            )
        )
    return delivery_id


def attempts_in_db(delivery_id: uuid.UUID) -> int:
    with session_scope() as session:
        return session.execute(
            select(func.count())
            .select_from(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
        ).scalar_one()


# --- a job's own webhook_url ----------------------------------------------------------


def test_retries_until_2xx_with_one_webhook_id_and_valid_signatures(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    _, client = tenant
    secret = secret_of(client)
    receiver.script("/hook", 500, 500, Answer(503, {"Retry-After": "0"}))  # then 200
    request_id = submit(
        client, webhook_url=receiver.url("/hook"), webhook_events_filter=["completed"]
    )
    (delivery,) = settled(client, 1, request_id=request_id)

    assert delivery["state"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 503, 200]
    assert [a["outcome"] for a in delivery["attempts"]] == ["retrying"] * 3 + ["succeeded"]
    assert all(a["latency_ms"] >= 0 and a["started_at"] for a in delivery["attempts"])
    seen = receiver.at("/hook")
    assert len(seen) == 4
    assert {r.headers["webhook-id"] for r in seen} == {delivery["webhook_id"]}
    payloads = [r.verify(secret) for r in seen]  # every attempt is signed
    assert {p["type"] for p in payloads} == {"job.completed"}
    data = payloads[-1]["data"]
    assert data["request_id"] == request_id and data["status"] == "COMPLETED"
    assert data["error"] is None and data["progress"] is None
    assert "inference_time" in data["metrics"]
    # The outputs as presigned URLs that work, never as bytes.
    assert len(data["output"]) == 1
    image = httpx.get(data["output"][0], timeout=30)
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"
    assert len(seen[-1].body) < 4096
    assert seen[-1].headers["content-type"] == "application/json"


def test_retry_after_of_the_receiver_is_honoured(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    """The test schedule retries within 0.2 s; the receiver's Retry-After: 2 wins."""
    _, client = tenant
    receiver.script("/later", Answer(429, {"Retry-After": "2"}))  # then 200
    request_id = submit(
        client, webhook_url=receiver.url("/later"), webhook_events_filter=["completed"]
    )
    (delivery,) = settled(client, 1, request_id=request_id)
    first, second = delivery["attempts"]
    assert (first["status_code"], second["status_code"]) == (429, 200)
    waited = datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(
        first["started_at"]
    )
    assert waited.total_seconds() >= 2 - 0.1, waited  # one host, one clock


def test_default_events_are_started_and_completed_once_each(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    _, client = tenant
    secret = secret_of(client)
    request_id = submit(client, webhook_url=receiver.url("/default"))
    found = settled(client, 2, request_id=request_id)
    assert {d["event_type"] for d in found} == {"job.started", "job.completed"}
    assert all(d["state"] == "succeeded" and d["endpoint_id"] is None for d in found)
    seen = receiver.at("/default")
    types = [r.verify(secret)["type"] for r in seen]
    assert sorted(types) == ["job.completed", "job.started"]  # no progress by default
    assert len({r.headers["webhook-id"] for r in seen}) == 2
    started = next(r.payload() for r in seen if r.payload()["type"] == "job.started")
    assert started["data"]["status"] == "PROCESSING" and started["data"]["output"] is None


def _the_completed_webhook(
    client: httpx.Client, receiver: Receiver, job_id: uuid.UUID, path: str
) -> dict[str, Any]:
    """The job's one delivery, succeeded: its job.completed payload, signature checked."""
    (delivery,) = settled(client, 1, request_id=str(job_id))
    assert delivery["event_type"] == "job.completed" and delivery["state"] == "succeeded"
    (seen,) = receiver.at(path)
    assert seen.headers["webhook-id"] == delivery["webhook_id"]
    payload: dict[str, Any] = seen.verify(secret_of(client))
    assert payload["type"] == "job.completed" and payload["data"]["output"] is None
    return payload


def test_a_failed_job_sends_completed_with_its_error(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    account_id, client = tenant
    job_id = insert_job(account_id, JobStatus.QUEUED, webhook_url=receiver.url("/failed"))
    with session_scope() as session:
        assert jobs.fail(session, job_id, "generation failed: out of luck")
    payload = _the_completed_webhook(client, receiver, job_id, "/failed")
    assert payload["data"]["status"] == "FAILED"
    assert payload["data"]["error"] == "generation failed: out of luck"


def test_a_cancelled_job_sends_completed_with_its_status(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    """Cancelled through the API while QUEUED: job.completed goes out, saying CANCELLED."""
    account_id, client = tenant
    job_id = insert_job(account_id, JobStatus.QUEUED, webhook_url=receiver.url("/cancelled"))
    cancelled = client.post(f"/v2/requests/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    payload = _the_completed_webhook(client, receiver, job_id, "/cancelled")
    assert payload["data"]["status"] == "CANCELLED"


def test_progress_events_are_throttled_per_job(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    account_id, client = tenant
    secret = secret_of(client)
    job_id = insert_job(
        account_id,
        JobStatus.PROCESSING,
        webhook_url=receiver.url("/progress"),
        webhook_events_filter=["progress"],
    )
    try:
        assert maybe_record_progress_event(job_id, 3, 10) is True
        assert maybe_record_progress_event(job_id, 4, 10) is False  # within the interval
    finally:
        with session_scope() as session:
            jobs.fail(session, job_id, "ended by the test")  # not subscribed to completed
    (seen,) = receiver.wait_for("/progress", 1)
    payload = seen.verify(secret)
    assert payload["type"] == "job.progress"
    assert payload["data"]["progress"] == {"done": 3, "total": 10}
    assert payload["data"]["status"] == "PROCESSING"
    # A job that is not running records none.
    assert maybe_record_progress_event(job_id, 5, 10) is False


@pytest.mark.parametrize("status", [302, 307, 308])
def test_redirects_are_failures_and_never_followed(
    tenant: tuple[str, httpx.Client], receiver: Receiver, status: int
) -> None:
    account_id, client = tenant
    receiver.script("/moved", Answer(status, {"Location": receiver.url("/elsewhere")}))
    job_id = insert_job(account_id, JobStatus.QUEUED, webhook_url=receiver.url("/moved"))
    with session_scope() as session:
        jobs.fail(session, job_id, "ended by the test")
    (delivery,) = settled(client, 1, request_id=str(job_id))
    assert delivery["state"] == "failed"
    (attempt,) = delivery["attempts"]  # not retried
    assert attempt["status_code"] == status and "not followed" in attempt["error"]
    assert receiver.at("/elsewhere") == []


def test_other_4xx_fail_without_retry_and_retries_give_up(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    account_id, client = tenant
    receiver.always("/bad", 400)
    receiver.always("/down", 502)
    job_id = insert_job(account_id, JobStatus.FAILED)
    bad = insert_delivery(account_id, job_id, receiver.url("/bad"))
    down = insert_delivery(account_id, job_id, receiver.url("/down"))
    found = {d["id"]: d for d in settled(client, 2, request_id=str(job_id))}
    assert [a["status_code"] for a in found[str(bad)]["attempts"]] == [400]
    assert found[str(bad)]["state"] == "failed"
    # 1 attempt + 5 retries (the test schedule), then it gives up.
    assert [a["status_code"] for a in found[str(down)]["attempts"]] == [502] * 6
    assert found[str(down)]["state"] == "failed"
    assert found[str(down)]["last_error"].startswith("gave up after 6 attempts")


def test_410_from_a_job_url_stops_its_deliveries(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    account_id, client = tenant
    receiver.always("/gone", 410)
    job_id = insert_job(
        account_id,
        JobStatus.PROCESSING,
        webhook_url=receiver.url("/gone"),
        webhook_events_filter=["progress", "completed"],
    )
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        record_job_event(session, job, "progress", progress={"done": 1, "total": 2})
    (delivery,) = settled(client, 1, request_id=str(job_id))
    assert delivery["state"] == "failed" and len(delivery["attempts"]) == 1
    with session_scope() as session:
        # The job's later events are not even recorded for that URL.
        assert jobs.fail(session, job_id, "ended by the test")
    assert len(deliveries(client, request_id=str(job_id))) == 1
    assert len(receiver.at("/gone")) == 1


# --- SSRF: refused at submit, and again at every attempt ---------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"webhook_url": "http://10.0.0.1/hook"}, "webhook_url: 10.0.0.1 is a private address"),
        ({"webhook_url": "http://169.254.169.254/latest"}, "webhook_url: 169.254.169.254 is a"),
        (
            {"webhook_url": "http://[::ffff:192.168.0.1]/h"},
            "webhook_url: ::ffff:c0a8:1 is a private",
        ),
        ({"webhook_url": "ftp://example.com/h"}, "webhook_url: only http and https"),
        ({"webhook_url": "http://user:pw@example.com/h"}, "webhook_url: URLs with credentials"),
        ({"webhook_events_filter": ["completed"]}, "webhook_events_filter: needs webhook_url"),
        (
            {"webhook_url": "http://127.0.0.1:9/h", "webhook_events_filter": ["finished"]},
            "webhook_events_filter.0:",
        ),
        ({"webhook_url": "http://127.0.0.1:9/h", "webhook_events_filter": []}, "webhook_events"),
    ],
)
def test_bad_webhook_urls_are_refused_at_submit_without_charge(
    tenant: tuple[str, httpx.Client], body: dict[str, Any], message: str
) -> None:
    _, client = tenant
    before = client.get("/v1/account").json()["balance"]
    response = client.post("/v2/ssd-img2img", json=job_body(**body))
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(message), response.json()
    assert client.get("/v1/account").json()["balance"] == before


def test_a_target_that_turned_private_is_refused_at_attempt_time(
    tenant: tuple[str, httpx.Client],
) -> None:
    account_id, client = tenant
    job_id = insert_job(account_id, JobStatus.FAILED)
    # As if the name had resolved to a public address at submit and to this one now.
    delivery_id = insert_delivery(account_id, job_id, "http://10.20.30.40:8080/hook")
    (delivery,) = settled(client, 1, request_id=str(job_id))
    assert delivery["id"] == str(delivery_id) and delivery["state"] == "failed"
    (attempt,) = delivery["attempts"]
    assert attempt["status_code"] is None
    assert "target refused" in attempt["error"] and "private address" in attempt["error"]


# --- durability: lost and repeated messages ---------------------------------------------


def test_the_sweep_sends_deliveries_whose_message_was_lost(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    account_id, client = tenant
    secret = secret_of(client)
    job_id = insert_job(account_id, JobStatus.FAILED)
    never_queued = insert_delivery(account_id, job_id, receiver.url("/lost"))
    queued_then_lost = insert_delivery(account_id, job_id, receiver.url("/lost"), dispatched=True)
    found = settled(client, 2, request_id=str(job_id))
    assert {d["id"] for d in found} == {str(never_queued), str(queued_then_lost)}
    assert all(d["state"] == "succeeded" and len(d["attempts"]) == 1 for d in found)
    assert all(r.verify(secret)["data"]["request_id"] == str(job_id) for r in receiver.at("/lost"))


def test_repeated_messages_and_concurrent_sweeps_send_each_attempt_once(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    account_id, client = tenant
    job_id = insert_job(account_id, JobStatus.FAILED)
    ids = [insert_delivery(account_id, job_id, receiver.url("/once")) for _ in range(20)]
    # Two sweeps at once (besides the CPU worker's own): SKIP LOCKED splits the rows.
    swept: list[list[uuid.UUID]] = [[], []]
    failures: list[BaseException] = []

    def sweep(i: int) -> None:
        try:
            swept[i].extend(webhook_delivery.sweep())
        except BaseException as exc:  # a sweep that raised must fail the test, not hide
            failures.append(exc)

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert not set(swept[0]) & set(swept[1])
    send_now(ids * 3)  # and every message repeated, as Redis may
    found = settled(client, 20, request_id=str(job_id))
    assert all(d["state"] == "succeeded" for d in found)
    assert all(attempts_in_db(i) == 1 for i in ids)
    seen = receiver.at("/once")
    assert len(seen) == 20 and len({r.headers["webhook-id"] for r in seen}) == 20
    # A claimed delivery cannot be claimed again.
    with session_scope() as session:
        assert webhook_delivery.claim(session, ids[0], get_settings()) is None


# --- account endpoints, secrets, replay ---------------------------------------------------


def test_account_endpoints_receive_events_beside_the_job_url(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    _, client = tenant
    secret = secret_of(client)
    everything = create_endpoint(
        client, receiver.url("/all"), events=["started", "completed"], description="ops"
    )
    create_endpoint(client, receiver.url("/done"), events=["completed"])
    request_id = submit(
        client, webhook_url=receiver.url("/own"), webhook_events_filter=["completed"]
    )
    found = settled(client, 4, request_id=request_id)
    assert sorted((d["url"].rsplit("/", 1)[1], d["event_type"]) for d in found) == [
        ("all", "job.completed"),
        ("all", "job.started"),
        ("done", "job.completed"),
        ("own", "job.completed"),
    ]
    # One event, one webhook-id, whatever the number of its targets.
    completed = {d["webhook_id"] for d in found if d["event_type"] == "job.completed"}
    assert len(completed) == 1
    for path in ("/all", "/done", "/own"):
        seen = receiver.at(path)
        assert seen and all(r.verify(secret) for r in seen), path
    by_endpoint = deliveries(client, endpoint_id=everything["id"])
    assert {d["event_type"] for d in by_endpoint} >= {"job.started", "job.completed"}


def test_410_disables_an_account_endpoint(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    account_id, client = tenant
    receiver.always("/gone-endpoint", 410)
    endpoint = create_endpoint(client, receiver.url("/gone-endpoint"), events=["completed"])
    first = submit(client)
    (delivery,) = settled(client, 1, request_id=first)
    assert delivery["state"] == "failed" and len(delivery["attempts"]) == 1
    assert delivery["attempts"][0]["status_code"] == 410
    now = client.get(f"/v2/webhooks/{endpoint['id']}").json()
    assert now["enabled"] is False and "410" in now["disabled_reason"]
    second = insert_job(account_id, JobStatus.QUEUED)  # nothing more is sent to it
    with session_scope() as session:
        assert jobs.fail(session, second, "ended by the test")
    assert deliveries(client, request_id=str(second)) == []
    # Replaying to a disabled endpoint is refused until it is enabled again.
    assert client.post(f"/v2/webhooks/deliveries/{delivery['id']}/replay").status_code == 409
    assert client.post(f"/v2/webhooks/{endpoint['id']}/enable").json()["enabled"] is True
    receiver.script("/gone-endpoint")  # now 200
    replayed = client.post(f"/v2/webhooks/deliveries/{delivery['id']}/replay")
    assert replayed.status_code == 202, replayed.text
    (delivery,) = settled(client, 1, request_id=first)
    assert delivery["state"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [410, 200]


def test_secret_rotation_signs_with_both_secrets_during_the_overlap(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    _, client = tenant
    old = secret_of(client)
    rotated = client.post("/v2/webhooks/secret/rotate").json()
    new = rotated["secret"]
    assert new != old and rotated["previous_secret"] == old
    assert rotated["previous_secret_expires_at"]
    assert client.get("/v2/webhooks/secret").json() == rotated

    request_id = submit(
        client, webhook_url=receiver.url("/rotated"), webhook_events_filter=["completed"]
    )
    (delivery,) = settled(client, 1, request_id=request_id)
    (seen,) = receiver.at("/rotated")
    first, second = seen.signatures()
    for signature, secret in ((first, new), (second, old)):
        alone = {**seen.headers, "webhook-signature": signature}
        Webhook(secret).verify(seen.body, alone)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(seen.body, {**seen.headers, "webhook-signature": first})

    # A leaked secret: rotate with no overlap, and the old one signs nothing more.
    rotated = client.post("/v2/webhooks/secret/rotate", json={"overlap_seconds": 0}).json()
    newest = rotated["secret"]
    assert rotated["previous_secret"] is None
    assert client.post(f"/v2/webhooks/deliveries/{delivery['id']}/replay").status_code == 202
    _, again = receiver.wait_for("/rotated", 2)
    assert len(again.signatures()) == 1
    assert again.headers["webhook-id"] == seen.headers["webhook-id"]  # a replay keeps it
    again.verify(newest)
    for stale in (new, old):
        with pytest.raises(WebhookVerificationError):
            again.verify(stale)
    (delivery,) = settled(client, 1, request_id=request_id)
    assert [(a["series"], a["number"]) for a in delivery["attempts"]] == [(1, 1), (2, 2)]


def test_output_urls_never_outlive_the_objects_and_expired_results_say_so(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    """A retry or replay late in the retention period gets URLs that expire with the
    objects; one after it gets `expired: true` and no URL, never a dead link."""
    _, client = tenant
    secret = secret_of(client)
    request_id = submit(
        client, webhook_url=receiver.url("/late"), webhook_events_filter=["completed"]
    )
    (delivery,) = settled(client, 1, request_id=request_id)
    retention = get_settings().result_retention_seconds

    def replay_as_if_finished_ago(seconds: int) -> dict[str, Any]:
        with session_scope() as session:
            job = session.get(Job, uuid.UUID(request_id))
            assert job is not None
            job.finished_at = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)
        seen = len(receiver.at("/late"))
        response = client.post(f"/v2/webhooks/deliveries/{delivery['id']}/replay")
        assert response.status_code == 202, response.text
        latest = receiver.wait_for("/late", seen + 1)[-1]
        assert latest.headers["webhook-id"] == delivery["webhook_id"]
        # The receiver has it before the sender records the answer: a replay meanwhile
        # would be refused as still pending.
        settled(client, 1, request_id=request_id)
        data: dict[str, Any] = latest.verify(secret)["data"]
        return data

    fresh = receiver.at("/late")[0].verify(secret)["data"]
    assert fresh["expired"] is False and len(fresh["output"]) == 1
    late = replay_as_if_finished_ago(retention - 100)  # 100 s of retention left
    (url,) = late["output"]
    expires = int(httpx.URL(url).params["X-Amz-Expires"])
    assert 1 <= expires <= 100, expires
    assert late["expired"] is False
    gone = replay_as_if_finished_ago(retention + 60)
    assert gone["expired"] is True and gone["output"] is None
    assert gone["status"] == "COMPLETED"


def test_replay_of_a_pending_delivery_is_refused(tenant: tuple[str, httpx.Client]) -> None:
    account_id, client = tenant
    job_id = insert_job(account_id, JobStatus.FAILED)
    delivery_id = insert_delivery(account_id, job_id, "http://127.0.0.1:9/never")
    with session_scope() as session:  # waiting for a retry far away
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        delivery.next_attempt_at = func.now() + func.make_interval(0, 0, 0, 1)
    response = client.post(f"/v2/webhooks/deliveries/{delivery_id}/replay")
    assert response.status_code == 409 and "pending" in response.json()["error"]


def test_endpoint_management(tenant: tuple[str, httpx.Client], receiver: Receiver) -> None:
    _, client = tenant
    created = create_endpoint(client, receiver.url("/m"))
    assert created["events"] == ["started", "completed"] and created["enabled"] is True
    with_all = create_endpoint(client, receiver.url("/m2"), events=["completed", "progress"])
    assert with_all["events"] == ["progress", "completed"]
    listed = client.get("/v2/webhooks").json()["endpoints"]
    assert [e["id"] for e in listed] == [created["id"], with_all["id"]]
    disabled = client.post(f"/v2/webhooks/{created['id']}/disable").json()
    assert disabled["enabled"] is False and disabled["disabled_reason"]
    assert client.delete(f"/v2/webhooks/{created['id']}").status_code == 204
    assert client.get(f"/v2/webhooks/{created['id']}").status_code == 404
    assert client.get("/v2/webhooks/not-a-uuid").status_code == 404
    for body, message in (
        ({"url": "http://192.168.1.10/h"}, "url: 192.168.1.10 is a private address"),
        ({"url": "gopher://example.com"}, "url: only http and https"),
        ({"url": receiver.url("/m"), "events": []}, "events:"),
        ({"url": receiver.url("/m"), "events": ["done"]}, "events.0:"),
    ):
        response = client.post("/v2/webhooks", json=body)
        assert response.status_code == 400 and response.json()["error"].startswith(message)
    bad_cursor = client.get("/v2/webhooks/deliveries", params={"cursor": "nope"})
    assert bad_cursor.status_code == 400


def test_the_cli_manages_an_accounts_webhooks(
    live_stack: Stack, tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    account_id, client = tenant
    created = json.loads(
        live_stack.cli(
            "webhooks", "create", account_id, receiver.url("/cli"), "--event", "completed", "--json"
        )
    )
    assert created["events"] == ["completed"]
    listed = json.loads(live_stack.cli("webhooks", "list", account_id, "--json"))
    assert listed == client.get("/v2/webhooks").json()
    secret = json.loads(live_stack.cli("webhooks", "secret", account_id, "--json"))
    assert secret["secret"] == secret_of(client)
    rotated = json.loads(
        live_stack.cli("webhooks", "rotate-secret", account_id, "--overlap-seconds", "60", "--json")
    )
    assert (
        rotated["previous_secret"]
        == secret["secret"]
        == client.get("/v2/webhooks/secret").json()["previous_secret"]
    )

    request_id = submit(client)
    (delivery,) = settled(client, 1, request_id=request_id)
    page = json.loads(
        live_stack.cli("webhooks", "deliveries", account_id, "--request-id", request_id, "--json")
    )
    assert [d["id"] for d in page["deliveries"]] == [delivery["id"]]
    replayed = json.loads(
        live_stack.cli("webhooks", "replay", account_id, delivery["id"], "--json")
    )
    assert replayed["series"] == 2 and replayed["webhook_id"] == delivery["webhook_id"]
    receiver.wait_for("/cli", 2)
    live_stack.cli("webhooks", "disable", account_id, created["id"])
    assert client.get(f"/v2/webhooks/{created['id']}").json()["enabled"] is False
    live_stack.cli("webhooks", "delete", account_id, created["id"])
    assert client.get("/v2/webhooks").json()["endpoints"] == []


def test_tenants_see_only_their_own_endpoints_and_deliveries(
    live_stack: Stack, tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    account_id, owner = tenant
    endpoint = create_endpoint(owner, receiver.url("/mine"))
    job_id = insert_job(account_id, JobStatus.FAILED)
    delivery_id = insert_delivery(account_id, job_id, receiver.url("/mine"))
    settled(owner, 1, request_id=str(job_id))

    _, other_key = live_stack.create_account(credits=0, name="other")
    with live_stack.client(other_key) as other:
        assert other.get("/v2/webhooks").json()["endpoints"] == []
        assert other.get("/v2/webhooks/deliveries").json()["deliveries"] == []
        assert secret_of(other) != secret_of(owner)
        for method, path in (
            ("GET", f"/v2/webhooks/{endpoint['id']}"),
            ("DELETE", f"/v2/webhooks/{endpoint['id']}"),
            ("POST", f"/v2/webhooks/{endpoint['id']}/disable"),
            ("GET", f"/v2/webhooks/deliveries/{delivery_id}"),
            ("POST", f"/v2/webhooks/deliveries/{delivery_id}/replay"),
            ("GET", f"/v2/webhooks/deliveries?request_id={job_id}"),
            ("GET", f"/v2/webhooks/deliveries?endpoint_id={endpoint['id']}"),
        ):
            response = other.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
    assert owner.get(f"/v2/webhooks/{endpoint['id']}").json()["enabled"] is True
    assert owner.get(f"/v2/webhooks/deliveries/{delivery_id}").status_code == 200
    assert owner.get("/v2/webhooks").status_code == 200
    assert httpx.get(f"{live_stack.api_url}/v2/webhooks").status_code == 401


def test_an_account_has_at_most_20_endpoints(
    tenant: tuple[str, httpx.Client], receiver: Receiver
) -> None:
    _, client = tenant
    for i in range(manage.MAX_ENDPOINTS_PER_ACCOUNT):
        create_endpoint(client, receiver.url(f"/many/{i}"))
    refused = client.post("/v2/webhooks", json={"url": receiver.url("/many/one-too-many")})
    assert refused.status_code == 409
    assert refused.json() == {"error": "an account has at most 20 webhook endpoints"}
    listed = client.get("/v2/webhooks")
    assert listed.status_code == 200, listed.text
    assert len(listed.json()["endpoints"]) == manage.MAX_ENDPOINTS_PER_ACCOUNT
