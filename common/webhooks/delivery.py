"""The CPU worker's side of webhooks: one attempt at a time, recorded in PostgreSQL.

An attempt is three steps, and only the middle one talks to the receiver:

1. `claim`, a short transaction: a conditional UPDATE takes the delivery if it is
   pending and due, counts the attempt and pushes `next_attempt_at` past the attempt's
   timeout. Of two workers handed the same delivery (a repeated message, two sweeps),
   one wins; the other finds it not due and drops its message. If the winner dies
   mid-attempt, the delivery falls due again once that time passes.
2. `send`, outside any transaction: sign and POST with the SSRF guards of
   common.urlsafety (the target is checked at every attempt and the connection goes to
   the checked address), no redirect followed, WEBHOOK_TIMEOUT_SECONDS at most.
3. `record`, a short transaction: the attempt's row, and the delivery's next state,
   written only if the claim is still the delivery's latest (its `attempts` count).

What an answer means:

- 2xx: delivered.
- 410 Gone: the receiver wants no more. An account endpoint is disabled; for a job's
  own webhook_url, this and the job's later events to it are not sent.
- 429, 5xx, and no answer at all (DNS, connection, TLS, timeout): retried after the
  next step of WEBHOOK_RETRY_SCHEDULE_SECONDS with equal jitter, and not before the
  receiver's Retry-After (seconds or an HTTP date, at most
  WEBHOOK_RETRY_AFTER_MAX_SECONDS). When the schedule is used up, the delivery fails.
- 3xx (not followed: it would send the signed body to a place never checked), every
  other 4xx, and a target that is no longer allowed (it resolves to a private
  address): failed at once; a retry would get the same answer.

Retries are not queued with a countdown: the failed attempt writes `next_attempt_at`,
and the periodic `sweep` queues what is due. The sweep also re-queues deliveries whose
message was queued long ago but never claimed (Redis lost it), so PostgreSQL alone
decides what is still to send.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common import retention, urlsafety
from common.db import session_scope
from common.models import (
    Job,
    WebhookAttempt,
    WebhookAttemptOutcome,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
)
from common.settings import Settings, get_settings
from common.webhooks import signing_keys
from common.webhooks.queue import send_now
from common.webhooks.signing import signature_header

logger = logging.getLogger(__name__)

# An attempt's claim outlives its timeout by this much before another worker may take
# the delivery again (DNS and scheduling slack).
CLAIM_MARGIN_SECONDS = 30
SWEEP_BATCH = 500
MAX_ERROR_CHARS = 1000
USER_AGENT = "ssd-img2img-webhooks/1"


@dataclass(frozen=True)
class ClaimedAttempt:
    """One attempt of one delivery, as claimed; `number` is also the claim's token."""

    delivery_id: uuid.UUID
    account_id: uuid.UUID
    job_id: uuid.UUID
    endpoint_id: uuid.UUID | None
    url: str
    webhook_id: str
    payload: dict[str, Any]
    number: int
    series: int
    series_attempt: int
    secrets: list[str]


@dataclass(frozen=True)
class AttemptResult:
    started_at: datetime
    latency_ms: int
    status_code: int | None
    error: str | None
    verdict: str  # "delivered", "retry", "gone" or "failed"
    retry_after: float | None = None


def _fill_output(session: Session, payload: dict[str, Any], settings: Settings) -> None:
    """Presign a COMPLETED job's outputs now, valid WEBHOOK_OUTPUT_URL_TTL_SECONDS from
    this attempt (a retry hours later still hands out working URLs), but never past the
    objects' deletion (RESULT_RETENTION_SECONDS). Once they are deleted, a late retry or
    a replay says so (`expired: true`, no `output`) instead of sending dead links."""
    data = payload.get("data") or {}
    if data.get("status") != "COMPLETED":
        return
    data.setdefault("expired", False)  # payloads recorded before the field existed
    job = session.get(Job, uuid.UUID(data["request_id"]))
    if job is None:
        return
    period = retention.retention_period(settings)
    ttl = retention.presigned_url_ttl(
        job, settings.webhook_output_url_ttl_seconds, period, datetime.now(UTC)
    )
    if ttl is None:
        data["output"] = None
        data["expired"] = True
        return
    from common.storage import get_storage

    store = get_storage()
    data["output"] = [store.presigned_get_url(key, ttl=ttl) for key in job.output_keys]


def claim(session: Session, delivery_id: uuid.UUID, settings: Settings) -> ClaimedAttempt | None:
    """Take the delivery's next attempt, or None when it is not pending and due."""
    hold = timedelta(seconds=settings.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS)
    delivery = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == WebhookDeliveryState.PENDING,
            WebhookDelivery.next_attempt_at <= func.now(),
        )
        .values(
            attempts=WebhookDelivery.attempts + 1,
            series_attempts=WebhookDelivery.series_attempts + 1,
            next_attempt_at=func.now() + hold,
        )
        .returning(WebhookDelivery)
    ).scalar_one_or_none()
    if delivery is None:
        return None
    if delivery.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            # Nothing is sent to a disabled endpoint; a replay after enabling it may.
            reason = endpoint.disabled_reason if endpoint is not None else None
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(
                    state=WebhookDeliveryState.FAILED,
                    attempts=WebhookDelivery.attempts - 1,
                    series_attempts=WebhookDelivery.series_attempts - 1,
                    next_attempt_at=None,
                    last_error=f"endpoint disabled{': ' + reason if reason else ''}",
                )
            )
            return None
    payload = json.loads(json.dumps(delivery.payload))  # a copy to fill in
    _fill_output(session, payload, settings)
    return ClaimedAttempt(
        delivery_id=delivery.id,
        account_id=delivery.account_id,
        job_id=delivery.job_id,
        endpoint_id=delivery.endpoint_id,
        url=delivery.url,
        webhook_id=delivery.webhook_id,
        payload=payload,
        number=delivery.attempts,
        series=delivery.series,
        series_attempt=delivery.series_attempts,
        secrets=signing_keys.in_force(session, delivery.account_id).signing(),
    )


def encode_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def classify(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "gone"
    if status == 429 or status >= 500:
        return "retry"
    return "failed"  # 1xx, 3xx (never followed) and the other 4xx


def send(attempt: ClaimedAttempt, settings: Settings) -> AttemptResult:
    """Sign and POST once. Never raises: every failure is an AttemptResult."""
    body = encode_body(attempt.payload)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": attempt.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(attempt.secrets, attempt.webhook_id, timestamp, body),
    }
    started_at = datetime.now(UTC)
    started = time.perf_counter()

    def result(
        verdict: str, status: int | None, error: str | None, retry_after: float | None = None
    ) -> AttemptResult:
        latency = round((time.perf_counter() - started) * 1000)
        return AttemptResult(
            started_at, latency, status, error and error[:MAX_ERROR_CHARS], verdict, retry_after
        )

    try:
        response = urlsafety.post(
            attempt.url,
            body,
            headers=headers,
            timeout=settings.webhook_timeout_seconds,
            allow_loopback=settings.allow_loopback_urls,
        )
    except urlsafety.UnsafeUrlError as exc:
        return result("failed", None, f"target refused: {exc}")
    except urlsafety.FetchError as exc:
        return result("retry", None, str(exc))
    except Exception as exc:  # e.g. a TLS failure httpcore does not wrap
        logger.warning("webhook %s: unexpected error", attempt.delivery_id, exc_info=True)
        return result("retry", None, f"{type(exc).__name__}: {exc}")
    verdict = classify(response.status)
    if verdict == "delivered":
        return result(verdict, response.status, None)
    error = f"HTTP {response.status}"
    if 300 <= response.status < 400:
        location = response.header("location")
        error += f" redirect{' to ' + location if location else ''} (redirects are not followed)"
    retry_after = parse_retry_after(response.header("retry-after")) if verdict == "retry" else None
    return result(verdict, response.status, error, retry_after)


def retry_delay(
    bound: float,
    retry_after: float | None,
    max_retry_after: float,
    rng: random.Random | None = None,
) -> float:
    """A wait uniform in [bound/2, bound] ("equal jitter": receivers failing together
    are not retried together, and the schedule keeps at least half its length), but
    never before the receiver's (capped) Retry-After."""
    delay = (rng or random).uniform(bound / 2, bound)
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_retry_after))
    return delay


def record(
    session: Session,
    attempt: ClaimedAttempt,
    result: AttemptResult,
    settings: Settings,
    rng: random.Random | None = None,
) -> WebhookAttemptOutcome:
    """Write the attempt and move the delivery on. Returns the attempt's outcome."""
    schedule = settings.webhook_retry_schedule_seconds
    changes: dict[str, Any] = {"last_error": result.error}
    if result.verdict == "delivered":
        outcome = WebhookAttemptOutcome.SUCCEEDED
        changes.update(state=WebhookDeliveryState.SUCCEEDED, next_attempt_at=None)
    elif result.verdict == "retry" and attempt.series_attempt <= len(schedule):
        outcome = WebhookAttemptOutcome.RETRYING
        bound = schedule[attempt.series_attempt - 1]
        delay = retry_delay(
            bound, result.retry_after, settings.webhook_retry_after_max_seconds, rng
        )
        # The sweep queues it when due; dispatched_at cleared so that it does at once.
        changes.update(next_attempt_at=func.now() + timedelta(seconds=delay), dispatched_at=None)
    else:
        outcome = WebhookAttemptOutcome.FAILED
        if result.verdict == "retry":
            changes["last_error"] = (
                f"gave up after {attempt.series_attempt} attempts; last: {result.error}"
            )
        changes.update(state=WebhookDeliveryState.FAILED, next_attempt_at=None)
    session.add(
        WebhookAttempt(
            delivery_id=attempt.delivery_id,
            number=attempt.number,
            series=attempt.series,
            started_at=result.started_at,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
            outcome=outcome,
        )
    )
    current = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == attempt.delivery_id,
            WebhookDelivery.state == WebhookDeliveryState.PENDING,
            WebhookDelivery.attempts == attempt.number,  # still our claim
        )
        .values(**changes)
        .returning(WebhookDelivery.id)
    ).scalar_one_or_none()
    if current is None:
        logger.warning(
            "webhook %s: attempt %s outlived its claim", attempt.delivery_id, attempt.number
        )
    if result.verdict == "gone":
        _receiver_gone(session, attempt)
    return outcome


def _receiver_gone(session: Session, attempt: ClaimedAttempt) -> None:
    if attempt.endpoint_id is not None:
        session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == attempt.endpoint_id, WebhookEndpoint.enabled.is_(True))
            .values(
                enabled=False,
                disabled_reason="the receiver answered 410 Gone at "
                + datetime.now(UTC).isoformat(timespec="seconds"),
            )
        )
        return
    # The job's own URL: its other deliveries still waiting are not sent either.
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.job_id == attempt.job_id,
            WebhookDelivery.endpoint_id.is_(None),
            WebhookDelivery.state == WebhookDeliveryState.PENDING,
            WebhookDelivery.id != attempt.delivery_id,
        )
        .values(
            state=WebhookDeliveryState.FAILED,
            next_attempt_at=None,
            last_error="not sent: the URL answered 410 Gone",
        )
    )


def deliver(delivery_id: uuid.UUID, settings: Settings | None = None) -> AttemptResult | None:
    """One attempt of a delivery if it is due (the CPU task). None when it was not."""
    settings = settings or get_settings()
    with session_scope() as session:
        attempt = claim(session, delivery_id, settings)
    if attempt is None:
        return None
    result = send(attempt, settings)
    try:
        with session_scope() as session:
            outcome = record(session, attempt, result, settings)
    except IntegrityError:
        # Its endpoint was deleted meanwhile, and the delivery with it.
        logger.info("webhook %s vanished during its attempt", delivery_id)
        return result
    logger.info(
        "webhook %s attempt %s to %s: %s (%s)",
        delivery_id,
        attempt.number,
        urlsafety.for_logs(attempt.url),
        outcome.value,
        result.status_code or result.error,
    )
    return result


def sweep(settings: Settings | None = None, batch: int = SWEEP_BATCH) -> list[uuid.UUID]:
    """Queue the deliveries that are due and not queued recently: retries whose time
    came, and deliveries whose message was lost. Replicas may sweep at once: SKIP
    LOCKED hands each row to one of them, and the claim stops any double attempt."""
    settings = settings or get_settings()
    stale = timedelta(seconds=settings.webhook_redispatch_after_seconds)
    with session_scope() as session:
        ids = list(
            session.execute(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.state == WebhookDeliveryState.PENDING,
                    WebhookDelivery.next_attempt_at <= func.now(),
                    or_(
                        WebhookDelivery.dispatched_at.is_(None),
                        WebhookDelivery.dispatched_at < func.now() - stale,
                    ),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        if ids:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(dispatched_at=func.now())
            )
    send_now(ids)
    return ids
