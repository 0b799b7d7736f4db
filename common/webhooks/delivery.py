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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, text, update
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
# How long one task goes on taking the next due attempts before it hands over to a new
# message (a task is acknowledged only when it returns).
WORK_SECONDS = 60.0
# Wake-ups each sweep sends for due deliveries that may go now (one per worker thread).
WAKE_PER_SWEEP = 4
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
    created_at: datetime | None = None  # the delivery's: its lag once delivered


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
    """Take the delivery's next attempt, or None when it is not pending and due, or when
    its account or endpoint has its bound of attempts in flight, or its endpoint is
    paused (it stays pending and due: `claim_next` takes it once it may go)."""
    target = session.execute(
        select(WebhookDelivery.account_id, WebhookDelivery.endpoint_id).where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == WebhookDeliveryState.PENDING,
            WebhookDelivery.next_attempt_at <= func.now(),
        )
    ).one_or_none()
    if target is None:
        return None
    account_id, endpoint_id = target
    # The account's claims one at a time (until this transaction ends): the counts of
    # attempts in flight below cannot be passed by a concurrent claim.
    session.execute(select(func.pg_advisory_xact_lock(_LOCK_CLASS, _lock_key(account_id))))
    if _held_back(session, account_id, endpoint_id, settings):
        return None
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
            in_attempt_until=func.now() + hold,
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
                    in_attempt_until=None,
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
        created_at=delivery.created_at,
    )


# pg_advisory_xact_lock(class, key): the class keeps these locks apart from others'.
_LOCK_CLASS = 0x5748  # "WH"


def _lock_key(account_id: uuid.UUID) -> int:
    return (account_id.int & 0xFFFFFFFF) - 0x80000000  # a signed int4


def _in_flight(session: Session, *where: Any) -> int:
    return session.execute(
        select(func.count())
        .select_from(WebhookDelivery)
        .where(WebhookDelivery.in_attempt_until > func.now(), *where)
    ).scalar_one()


def _held_back(
    session: Session, account_id: uuid.UUID, endpoint_id: uuid.UUID | None, settings: Settings
) -> bool:
    """Whether an attempt must wait: the account or the endpoint has its bound of
    attempts in flight, or the endpoint is paused after a run of failures."""
    if endpoint_id is not None:
        paused = session.execute(
            select(WebhookEndpoint.id).where(
                WebhookEndpoint.id == endpoint_id,
                WebhookEndpoint.enabled.is_(True),
                WebhookEndpoint.paused_until > func.now(),
            )
        ).scalar_one_or_none()
        if paused is not None:
            return True
        busy = _in_flight(session, WebhookDelivery.endpoint_id == endpoint_id)
        if busy >= settings.webhook_max_attempts_per_endpoint:
            return True
    busy = _in_flight(session, WebhookDelivery.account_id == account_id)
    return busy >= settings.webhook_max_attempts_per_account


# The due deliveries that may be attempted now, one per account (its oldest), the
# accounts with the fewest attempts in flight first: no account's backlog, slow
# receivers or dead endpoints delay another's webhooks beyond its own share.
_NEXT = text(
    """
    WITH in_flight AS (
        SELECT account_id, endpoint_id FROM webhook_deliveries
        WHERE in_attempt_until > now()
    ), busy_accounts AS (
        SELECT account_id FROM in_flight GROUP BY account_id HAVING count(*) >= :per_account
    ), busy_endpoints AS (
        SELECT endpoint_id FROM in_flight WHERE endpoint_id IS NOT NULL
        GROUP BY endpoint_id HAVING count(*) >= :per_endpoint
    ), heads AS (
        SELECT DISTINCT ON (d.account_id) d.id, d.account_id, d.next_attempt_at
        FROM webhook_deliveries d
        LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id
        WHERE d.state = 'pending' AND d.next_attempt_at <= now()
          AND d.account_id NOT IN (SELECT account_id FROM busy_accounts)
          AND (d.endpoint_id IS NULL
               OR d.endpoint_id NOT IN (SELECT endpoint_id FROM busy_endpoints))
          AND (e.id IS NULL OR NOT e.enabled OR e.paused_until IS NULL
               OR e.paused_until <= now())
        ORDER BY d.account_id, d.next_attempt_at
    )
    SELECT h.id FROM heads h
    ORDER BY (SELECT count(*) FROM in_flight f WHERE f.account_id = h.account_id),
             h.next_attempt_at
    LIMIT :candidates
    """
)


def _next_params(settings: Settings, candidates: int) -> dict[str, int]:
    return {
        "per_account": settings.webhook_max_attempts_per_account,
        "per_endpoint": settings.webhook_max_attempts_per_endpoint,
        "candidates": candidates,
    }


def next_due(settings: Settings, limit: int, session: Session | None = None) -> list[uuid.UUID]:
    """Up to `limit` deliveries that may be attempted now, in the fair order."""
    if session is not None:
        return list(session.execute(_NEXT, _next_params(settings, limit)).scalars())
    with session_scope() as own:
        return next_due(settings, limit, own)


def claim_next(settings: Settings) -> ClaimedAttempt | None:
    """The next attempt in the fair order across accounts, or None when nothing due may
    go now. Its candidates are claimed in turn, each in a transaction of its own (so
    that no transaction holds two accounts' claim locks), as another worker may take
    one first."""
    for delivery_id in next_due(settings, 4):
        with session_scope() as session:
            attempt = claim(session, delivery_id, settings)
        if attempt is not None:
            return attempt
    return None


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
    changes: dict[str, Any] = {"last_error": result.error, "in_attempt_until": None}
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
    elif attempt.endpoint_id is not None:
        disabled = _track_endpoint(session, attempt.endpoint_id, result.verdict, settings)
        if disabled is not None:
            session.execute(
                update(WebhookAttempt)
                .where(
                    WebhookAttempt.delivery_id == attempt.delivery_id,
                    WebhookAttempt.number == attempt.number,
                )
                .values(error=f"{result.error}; {disabled}")
            )
    return outcome


def _track_endpoint(
    session: Session, endpoint_id: uuid.UUID, verdict: str, settings: Settings
) -> str | None:
    """Count the endpoint's run of failures: a success ends it; a long one pauses the
    endpoint, a longer one disables it. Returns the reason when it was disabled now."""
    endpoint = session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
    if endpoint is None:
        return None
    if verdict == "delivered":
        endpoint.consecutive_failures = 0
        endpoint.failing_since = None
        endpoint.paused_until = None
        return None
    now = session.execute(select(func.now())).scalar_one()
    endpoint.consecutive_failures += 1
    endpoint.failing_since = endpoint.failing_since or now
    failures = endpoint.consecutive_failures
    if failures >= settings.webhook_pause_after_failures:
        endpoint.paused_until = now + timedelta(seconds=settings.webhook_pause_seconds)
    lasted = (now - endpoint.failing_since).total_seconds()
    if (
        endpoint.enabled
        and failures >= settings.webhook_disable_after_failures
        and lasted >= settings.webhook_disable_after_seconds
    ):
        endpoint.enabled = False
        endpoint.disabled_reason = (
            f"disabled automatically after {failures} failed attempts in a row since "
            f"{endpoint.failing_since.isoformat(timespec='seconds')}; fix the receiver, then "
            f"POST /v2/webhooks/{endpoint_id}/enable (and replay what it missed)"
        )[:500]
        return "endpoint disabled: " + endpoint.disabled_reason
    return None


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
    """The CPU task: one attempt of the delivery if it may go now, then the attempts
    due in the fair order (`claim_next`) for as long as there are some, up to
    WORK_SECONDS; then a message for what is left. None when the named one did not go
    (not due, or held back by its bounds: it is taken in its turn)."""
    settings = settings or get_settings()
    with session_scope() as session:
        attempt = claim(session, delivery_id, settings)
    result = attempt_and_record(attempt, settings) if attempt is not None else None
    deadline = time.monotonic() + WORK_SECONDS
    while time.monotonic() < deadline:
        following = claim_next(settings)
        if following is None:
            return result
        attempt_and_record(following, settings)
    send_now(next_due(settings, 1))  # more due: another message goes on with it
    return result


def attempt_and_record(attempt: ClaimedAttempt, settings: Settings) -> AttemptResult:
    """Send one claimed attempt, then record it."""
    delivery_id = attempt.delivery_id
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
    for observe in ATTEMPT_OBSERVERS:
        observe(attempt, result)
    return result


# Called with each recorded attempt and its result: the background worker's metrics
# (background/metrics.py) register here, so this module needs no process's code.
ATTEMPT_OBSERVERS: list[Callable[[ClaimedAttempt, AttemptResult], None]] = []


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
    # Deliveries held back (their account's or endpoint's bound, a pause) stay due with
    # their message spent: wake a few workers for what may go now, in the fair order.
    send_now([i for i in next_due(settings, WAKE_PER_SWEEP) if i not in set(ids)])
    return ids
