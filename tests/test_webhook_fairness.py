"""Webhook delivery is fair across accounts and bounded per endpoint: one account's
dead receivers hold at most WEBHOOK_MAX_ATTEMPTS_PER_ACCOUNT of the CPU worker's
threads, pause after a run of failures instead of holding a thread for the full
timeout again and again, and are disabled after a long run; another account's webhooks
go meanwhile."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from common.db import get_session_factory, session_scope
from common.models import (
    Job,
    JobStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
    WebhookEventType,
)
from common.settings import get_settings
from common.webhooks import delivery as webhook_delivery
from common.webhooks import manage
from common.webhooks.signing import new_webhook_id
from tests.support.helpers import insert_job, job_body, wait_terminal
from tests.support.live import Stack
from tests.support.loopback_http import silent_server
from tests.support.waiting import wait_until
from tests.support.webhook_receiver import Receiver, webhook_receiver

ALL_EVENTS = ["started", "progress", "completed"]


def _in_flight(account_id: str) -> int:
    with session_scope() as session:
        return session.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(
                WebhookDelivery.account_id == uuid.UUID(account_id),
                WebhookDelivery.in_attempt_until > func.now(),
            )
        ).scalar_one()


def test_dead_endpoints_of_one_account_do_not_delay_anothers_webhooks(
    live_stack: Stack,
) -> None:
    noisy_id, noisy_key = live_stack.create_account(credits=100_000, name="dead-receivers")
    _, quiet_key = live_stack.create_account(credits=100_000, name="live-receiver")
    with (
        silent_server() as dead_port,
        webhook_receiver() as receiver,
        live_stack.client(noisy_key) as noisy,
        live_stack.client(quiet_key) as quiet,
    ):
        for i in range(20):
            created = noisy.post(
                "/v2/webhooks",
                json={"url": f"http://127.0.0.1:{dead_port}/hook/{i}", "events": ALL_EVENTS},
            )
            assert created.status_code == 201, created.text
        for seed in range(3):
            response = noisy.post("/v2/ssd-img2img", json=job_body(seed=seed, strength=0.9))
            assert response.status_code == 200, response.text
        # The dead receivers now hold the noisy account's share of the CPU worker.
        wait_until(lambda: _in_flight(noisy_id) >= 2 or None, "attempts to the dead receivers")

        created = quiet.post("/v2/webhooks", json={"url": receiver.url("/quiet")})
        assert created.status_code == 201, created.text
        response = quiet.post("/v2/ssd-img2img", json=job_body())
        assert response.status_code == 200, response.text
        request_id = response.json()["request_id"]
        wait_terminal(quiet, f"/v2/requests/{request_id}/status")
        in_flight: list[int] = []
        completed = _wait_for_event(
            receiver, "/quiet", "job.completed", lambda: in_flight.append(_in_flight(noisy_id))
        )
        arrived = datetime.now(UTC)

    with session_scope() as session:
        job = session.get(Job, uuid.UUID(request_id))
        assert job is not None and job.finished_at is not None
        waited = (arrived - job.finished_at).total_seconds()
    assert completed["data"]["request_id"] == request_id
    assert waited < 10, f"the other account's webhook came {waited:.1f} s after its job ended"
    # Meanwhile the dead receivers held no more than the noisy account's bound.
    assert in_flight and max(in_flight) <= get_settings().webhook_max_attempts_per_account


def _wait_for_event(
    receiver: Receiver, path: str, event: str, each_poll: Callable[[], object]
) -> dict:
    def found() -> dict | None:
        each_poll()
        for received in receiver.at(path):
            payload = received.payload()
            if payload["type"] == event:
                return payload
        return None

    payload: dict = wait_until(found, f"{event} at {path}", timeout=60)
    return payload


@contextmanager
def _unseen() -> Iterator[Session]:
    """A transaction never committed: the live stack's CPU worker cannot see (and race
    for) the deliveries written in it."""
    session = get_session_factory()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def _due(session: Session, account_id: str, job_id: uuid.UUID, url: str) -> uuid.UUID:
    delivery = WebhookDelivery(
        id=uuid.uuid4(),
        account_id=uuid.UUID(account_id),
        job_id=job_id,
        url=url,
        event_type=WebhookEventType.COMPLETED,
        webhook_id=new_webhook_id(),
        payload={"type": "job.completed", "data": {"request_id": str(job_id)}},
        state=WebhookDeliveryState.PENDING,
        next_attempt_at=func.now(),
    )
    session.add(delivery)
    session.flush()
    return delivery.id


def test_a_run_of_failures_pauses_then_disables_an_endpoint(live_stack: Stack) -> None:
    """In-process, against PostgreSQL: the endpoint's run of failures is counted at each
    recorded attempt; it pauses the endpoint (nothing due to it is claimed meanwhile),
    then disables it, saying so in the attempt and in the endpoint's reason; enabling
    starts the run over."""
    account_id, key = live_stack.create_account(name="failing-endpoint")
    settings = get_settings().model_copy(
        update={
            "webhook_pause_after_failures": 2,
            "webhook_pause_seconds": 3600,
            "webhook_disable_after_failures": 3,
            "webhook_disable_after_seconds": 0,
        }
    )
    url = "http://127.0.0.1:9/x"  # loopback: allowed in tests; never sent to here
    with live_stack.client(key) as client:
        endpoint_id = uuid.UUID(client.post("/v2/webhooks", json={"url": url}).json()["id"])
    job_id = insert_job(account_id, JobStatus.FAILED)
    failing = webhook_delivery.AttemptResult(datetime.now(UTC), 5, 503, "HTTP 503", "retry")

    with _unseen() as session:

        def attempt_once() -> uuid.UUID | None:
            delivery_id = _due(session, account_id, job_id, url)
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(endpoint_id=endpoint_id)
            )
            attempt = webhook_delivery.claim(session, delivery_id, settings)
            if attempt is None:
                return None
            webhook_delivery.record(session, attempt, failing, settings)
            return delivery_id

        assert attempt_once() is not None
        assert attempt_once() is not None  # the second failure in a row: paused
        held = attempt_once()  # held back while paused: still pending and due
        assert held is None
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None and endpoint.paused_until is not None
        assert endpoint.consecutive_failures == 2
        endpoint.paused_until = None  # the pause is over
        session.flush()
        last = attempt_once()  # the third failure: disabled
        assert last is not None
        session.refresh(endpoint)
        assert not endpoint.enabled and endpoint.disabled_reason is not None
        assert "3 failed attempts in a row" in endpoint.disabled_reason
        assert f"/v2/webhooks/{endpoint_id}/enable" in endpoint.disabled_reason
        error = session.execute(
            select(WebhookAttempt.error).where(WebhookAttempt.delivery_id == last)
        ).scalar_one()
        assert error is not None and "endpoint disabled" in error  # in its delivery log

        enabled = manage.set_endpoint_enabled(session, uuid.UUID(account_id), endpoint_id, True)
        assert (enabled.consecutive_failures, enabled.paused_until) == (0, None)
        assert enabled.failing_since is None


def test_claims_respect_the_bounds_of_attempts_in_flight(live_stack: Stack) -> None:
    """At most WEBHOOK_MAX_ATTEMPTS_PER_ACCOUNT of an account's attempts at once, and
    WEBHOOK_MAX_ATTEMPTS_PER_ENDPOINT per endpoint; the next in the fair order is then
    another account's."""
    settings = get_settings()
    busy_id, busy_key = live_stack.create_account(name="busy-webhooks")
    other_id, _ = live_stack.create_account(name="other-webhooks")
    busy_job = insert_job(busy_id, JobStatus.FAILED)
    other_job = insert_job(other_id, JobStatus.FAILED)
    with live_stack.client(busy_key) as client:
        endpoint = client.post("/v2/webhooks", json={"url": "http://127.0.0.1:9/e"}).json()
    with _unseen() as session:
        busy = [_due(session, busy_id, busy_job, f"https://hooks.example/{i}") for i in range(5)]
        other = _due(session, other_id, other_job, "https://hooks.example/other")
        claimed = [webhook_delivery.claim(session, i, settings) for i in busy]
        assert sum(1 for c in claimed if c is not None) == settings.webhook_max_attempts_per_account
        due = webhook_delivery.next_due(settings, 10, session)
        assert other in due and not set(due) & set(busy)

        # The busy account's attempts end; one endpoint: its second delivery waits for
        # the first's attempt to end, though the account has room.
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(busy))
            .values(in_attempt_until=None)
        )
        to_endpoint = [_due(session, busy_id, busy_job, endpoint["url"]) for _ in range(2)]
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(to_endpoint))
            .values(endpoint_id=uuid.UUID(endpoint["id"]))
        )
        first, second = (webhook_delivery.claim(session, i, settings) for i in to_endpoint)
        assert first is not None and second is None
