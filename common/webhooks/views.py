"""What the webhook API (`/v2/webhooks`) answers and the CLI (`ssd-img2img webhooks ...
--json`) prints: one shape for both, built from the rows here."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from common.models import (
    WebhookAttempt,
    WebhookAttemptOutcome,
    WebhookDelivery,
    WebhookDeliveryState,
    WebhookEndpoint,
    WebhookEventType,
)
from common.webhooks.signing_keys import SecretsInForce


class EndpointView(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_reason: str | None = Field(
        description="Why it is off: by hand, 410 Gone, or a long run of failures."
    )
    consecutive_failures: int = Field(description="Failed attempts in a row (0 after a success).")
    paused_until: datetime | None = Field(
        description="After several failures in a row nothing is attempted until then."
    )
    created_at: datetime
    updated_at: datetime


class EndpointList(BaseModel):
    endpoints: list[EndpointView]


class SecretView(BaseModel):
    """The account's signing secrets: verify with `secret`; during a rotation's overlap
    webhooks carry a second signature, made with `previous_secret`."""

    secret: str = Field(description="whsec_<base64>; HMAC key = the base64-decoded part.")
    previous_secret: str | None = None
    previous_secret_expires_at: datetime | None = None


class AttemptView(BaseModel):
    number: int = Field(description="1, 2, ... across all series of the delivery.")
    series: int = Field(description="1; each replay starts the next.")
    started_at: datetime
    status_code: int | None = Field(description="null: no HTTP answer (see error).")
    latency_ms: int
    error: str | None
    outcome: WebhookAttemptOutcome


class DeliveryView(BaseModel):
    id: uuid.UUID
    webhook_id: str = Field(description="The webhook-id header: the same on every attempt.")
    event_type: WebhookEventType
    request_id: uuid.UUID
    endpoint_id: uuid.UUID | None = Field(description="null: the request's own webhook_url.")
    url: str
    state: WebhookDeliveryState
    attempt_count: int
    series: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any] = Field(
        description="The body sent, except `data.output`, presigned afresh at each attempt."
    )
    attempts: list[AttemptView]


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryView]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next (older) page; null on the last page."
    )


def endpoint_view(endpoint: WebhookEndpoint) -> EndpointView:
    return EndpointView(
        id=endpoint.id,
        url=endpoint.url,
        events=list(endpoint.events),
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        consecutive_failures=endpoint.consecutive_failures,
        paused_until=endpoint.paused_until,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def secret_view(secrets: SecretsInForce) -> SecretView:
    return SecretView(
        secret=secrets.current,
        previous_secret=secrets.previous,
        previous_secret_expires_at=secrets.previous_expires_at,
    )


def delivery_view(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryView:
    return DeliveryView(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_type=delivery.event_type,
        request_id=delivery.job_id,
        endpoint_id=delivery.endpoint_id,
        url=delivery.url,
        state=delivery.state,
        attempt_count=delivery.attempts,
        series=delivery.series,
        next_attempt_at=delivery.next_attempt_at,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
        updated_at=delivery.updated_at,
        payload=dict(delivery.payload),
        attempts=[
            AttemptView(
                number=a.number,
                series=a.series,
                started_at=a.started_at,
                status_code=a.status_code,
                latency_ms=a.latency_ms,
                error=a.error,
                outcome=a.outcome,
            )
            for a in attempts
        ],
    )
