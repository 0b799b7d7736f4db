"""Request bodies of the operator's /admin API; what it answers (and the CLI prints with
--json) is in common/account_views.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.text import Text
from common.account_admin import MAX_CREDIT_CHANGE, MAX_LIMIT_VALUE, MAX_SCHEDULING_WEIGHT


class CreateAccountBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Text = Field(min_length=1, max_length=200)
    credits: int = Field(default=0, ge=0, le=MAX_CREDIT_CHANGE, strict=True)


class AddCreditsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: int = Field(
        ge=-MAX_CREDIT_CHANGE,
        le=MAX_CREDIT_CHANGE,
        strict=True,
        description="Positive for a grant; either sign for an adjustment.",
    )
    reason: Literal["grant", "adjustment"] = "grant"
    note: Text | None = Field(
        default=None, max_length=500, description="Why; required for an adjustment."
    )


class CreateKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(default=None, max_length=200)


class SetLimitsBody(BaseModel):
    """Only the fields sent change; null returns a limit to the service default."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_per_minute: int | None = Field(default=None, ge=1, le=MAX_LIMIT_VALUE, strict=True)
    max_jobs_in_flight: int | None = Field(default=None, ge=1, le=MAX_LIMIT_VALUE, strict=True)
    scheduling_weight: int | None = Field(default=None, ge=1, le=MAX_SCHEDULING_WEIGHT, strict=True)
    max_url_fetches: int | None = Field(default=None, ge=1, le=MAX_LIMIT_VALUE, strict=True)
    max_streams: int | None = Field(default=None, ge=1, le=MAX_LIMIT_VALUE, strict=True)
