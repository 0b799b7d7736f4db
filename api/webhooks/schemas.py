"""Request bodies of `/v2/webhooks`; what it answers is in common/webhooks/views.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.text import Text

EventName = Literal["started", "progress", "completed"]


class CreateEndpointBody(BaseModel):
    url: Text = Field(
        min_length=1, max_length=2048, description="http(s); must resolve to public addresses."
    )
    events: list[EventName] | None = Field(
        default=None,
        min_length=1,
        description="Events to receive; default started and completed. `completed` "
        "covers every terminal state (COMPLETED, FAILED, CANCELLED).",
    )
    description: Text | None = Field(default=None, max_length=500)


class RotateSecretBody(BaseModel):
    overlap_seconds: int | None = Field(
        default=None,
        ge=0,
        le=30 * 24 * 3600,
        description="How long the old secret still signs too; default "
        "WEBHOOK_SECRET_OVERLAP_SECONDS (24 h). 0 = it stops now (a leaked secret).",
    )
