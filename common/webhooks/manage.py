"""An account's webhook endpoints, signing secrets and deliveries: the operations behind
`/v2/webhooks` (the tenant's own key) and `ssd-img2img webhooks` (the operator, for
an account id). Every query is scoped to the account: another tenant's endpoint or
delivery is "not found". Functions here never commit; they raise refusals
(common/refusals.py), which both front ends turn into messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from common import cursors, urlsafety
from common.models import (
    Account,
    Job,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
)
from common.refusals import Conflict, InvalidInput, NotFound
from common.settings import Settings
from common.webhooks import signing_keys
from common.webhooks.events import DEFAULT_EVENTS, EVENT_NAMES, check_target_url
from common.webhooks.queue import send_after_commit

# Each endpoint gets every event of every job of the account: a handful is plenty.
MAX_ENDPOINTS_PER_ACCOUNT = 20


def require_account(session: Session, account_id: uuid.UUID) -> None:
    """For the CLI, which names the account itself."""
    if session.get(Account, account_id) is None:
        raise NotFound(f"account {account_id} not found")


def normalise_events(events: Sequence[str] | None) -> list[str]:
    """Known event names, each once, in a fixed order; None = the default."""
    if events is None:
        return list(DEFAULT_EVENTS)
    unknown = sorted(set(events) - set(EVENT_NAMES))
    if unknown:
        raise InvalidInput(f"events: unknown {', '.join(unknown)}; use {', '.join(EVENT_NAMES)}")
    if not events:
        raise InvalidInput(f"events: name at least one of {', '.join(EVENT_NAMES)}")
    return [name for name in EVENT_NAMES if name in events]


# --- endpoints -------------------------------------------------------------------------


def create_endpoint(
    session: Session,
    settings: Settings,
    account_id: uuid.UUID,
    url: str,
    events: Sequence[str] | None = None,
    description: str | None = None,
) -> WebhookEndpoint:
    try:
        check_target_url(url, settings)
    except urlsafety.UrlError as exc:
        raise InvalidInput(f"url: {exc}") from exc
    wanted = normalise_events(events)
    if description is not None and "\x00" in description:
        raise InvalidInput("description: must not contain NUL characters")
    # Counted under the account's row lock, so concurrent creates cannot overshoot.
    session.execute(select(Account.id).where(Account.id == account_id).with_for_update())
    count = session.execute(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.account_id == account_id)
    ).scalar_one()
    if count >= MAX_ENDPOINTS_PER_ACCOUNT:
        raise Conflict(f"an account has at most {MAX_ENDPOINTS_PER_ACCOUNT} webhook endpoints")
    endpoint = WebhookEndpoint(
        account_id=account_id,
        url=url.strip(),
        events=wanted,
        description=description,
        enabled=True,
    )
    session.add(endpoint)
    session.flush()
    session.refresh(endpoint)  # server-side timestamps
    return endpoint


def list_endpoints(session: Session, account_id: uuid.UUID) -> list[WebhookEndpoint]:
    return list(
        session.execute(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.account_id == account_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        ).scalars()
    )


Owned = TypeVar("Owned", WebhookEndpoint, WebhookDelivery)


def _owned(
    session: Session, model: type[Owned], account_id: uuid.UUID, row_id: uuid.UUID, what: str
) -> Owned:
    """The account's row `row_id`; another account's is as unknown as a missing one."""
    row = session.execute(
        select(model).where(model.id == row_id, model.account_id == account_id)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"{what} not found")
    return row


def get_endpoint(
    session: Session, account_id: uuid.UUID, endpoint_id: uuid.UUID
) -> WebhookEndpoint:
    return _owned(session, WebhookEndpoint, account_id, endpoint_id, "webhook endpoint")


def delete_endpoint(session: Session, account_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    """Delete the endpoint and, with it, its deliveries and their attempts."""
    deleted = session.execute(
        delete(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.account_id == account_id)
        .returning(WebhookEndpoint.id)
    ).scalar_one_or_none()
    if deleted is None:
        raise NotFound("webhook endpoint not found")


def set_endpoint_enabled(
    session: Session, account_id: uuid.UUID, endpoint_id: uuid.UUID, enabled: bool
) -> WebhookEndpoint:
    """Disable (nothing is sent; its waiting deliveries fail at their next attempt) or
    enable again, e.g. after a 410 Gone or a long run of failures disabled it (the run
    starts over: the next attempt goes at once)."""
    endpoint = get_endpoint(session, account_id, endpoint_id)
    endpoint.enabled = enabled
    endpoint.disabled_reason = None if enabled else "disabled through the API or CLI"
    if enabled:
        endpoint.consecutive_failures = 0
        endpoint.failing_since = None
        endpoint.paused_until = None
    session.flush()
    session.refresh(endpoint)
    return endpoint


# --- secrets ---------------------------------------------------------------------------


def get_secrets(session: Session, account_id: uuid.UUID) -> signing_keys.SecretsInForce:
    """The signing secrets in force (the first is created when the account has none)."""
    return signing_keys.in_force(session, account_id)


def rotate_secret(
    session: Session, settings: Settings, account_id: uuid.UUID, overlap_seconds: int | None
) -> signing_keys.SecretsInForce:
    overlap = (
        settings.webhook_secret_overlap_seconds if overlap_seconds is None else overlap_seconds
    )
    if overlap < 0:
        raise InvalidInput("overlap_seconds: must not be negative")
    return signing_keys.rotate(session, account_id, overlap)


# --- deliveries ------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[WebhookDelivery]
    attempts: dict[uuid.UUID, list[WebhookAttempt]]
    next_cursor: str | None


def attempts_of(
    session: Session, delivery_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[WebhookAttempt]]:
    found: dict[uuid.UUID, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if delivery_ids:
        rows = session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.number)
        ).scalars()
        for attempt in rows:
            found[attempt.delivery_id].append(attempt)
    return found


def list_deliveries(
    session: Session,
    account_id: uuid.UUID,
    *,
    limit: int,
    request_id: uuid.UUID | None = None,
    endpoint_id: uuid.UUID | None = None,
    state: WebhookDeliveryState | None = None,
    cursor: str | None = None,
) -> DeliveryPage:
    """The account's deliveries, newest first, each with its attempts."""
    query = select(WebhookDelivery).where(WebhookDelivery.account_id == account_id)
    if request_id is not None:
        owned = session.execute(
            select(Job.id).where(Job.id == request_id, Job.account_id == account_id)
        ).first()
        if owned is None:
            raise NotFound("request not found")
        query = query.where(WebhookDelivery.job_id == request_id)
    if endpoint_id is not None:
        get_endpoint(session, account_id, endpoint_id)
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if state is not None:
        query = query.where(WebhookDelivery.state == state)
    if cursor:
        query = query.where(
            tuple_(WebhookDelivery.created_at, WebhookDelivery.id) < tuple_(*cursors.decode(cursor))
        )
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    rows = list(session.execute(query.limit(limit + 1)).scalars())
    page = rows[:limit]
    return DeliveryPage(
        deliveries=page,
        attempts=attempts_of(session, [d.id for d in page]),
        next_cursor=cursors.encode(page[-1].created_at, page[-1].id) if len(rows) > limit else None,
    )


def get_delivery(
    session: Session, account_id: uuid.UUID, delivery_id: uuid.UUID
) -> WebhookDelivery:
    return _owned(session, WebhookDelivery, account_id, delivery_id, "webhook delivery")


def replay_delivery(
    session: Session, account_id: uuid.UUID, delivery_id: uuid.UUID
) -> WebhookDelivery:
    """Send a finished delivery again: a new series of attempts (the whole retry
    schedule) with the same webhook-id and payload, queued after the commit."""
    delivery = get_delivery(session, account_id, delivery_id)
    if delivery.endpoint_id is not None:
        endpoint = get_endpoint(session, account_id, delivery.endpoint_id)
        if not endpoint.enabled:
            raise Conflict("the delivery's endpoint is disabled: enable it first")
    replayed = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state != WebhookDeliveryState.PENDING,
        )
        .values(
            state=WebhookDeliveryState.PENDING,
            series=WebhookDelivery.series + 1,
            series_attempts=0,
            next_attempt_at=func.now(),
            dispatched_at=func.now(),
            last_error=None,
        )
        .returning(WebhookDelivery.id)
    ).scalar_one_or_none()
    if replayed is None:
        raise Conflict("the delivery is still pending: wait until it succeeds or fails")
    send_after_commit(session, [delivery_id])
    session.refresh(delivery)
    return delivery
