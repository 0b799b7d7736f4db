"""Bodies of the operator's /admin API; the CLI prints the same shapes with --json.

A key's hash is never part of any of them, and its raw value only of the answer that
creates it.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.text import Text
from common import account_admin, limits
from common.account_admin import MAX_CREDIT_CHANGE, MAX_LIMIT_VALUE, MAX_SCHEDULING_WEIGHT
from common.accounts import NewApiKey
from common.models import Account, AccountStatus, ApiKey, CreditLedgerEntry, LedgerReason
from common.settings import Settings


class LimitsView(BaseModel):
    """The limits in force."""

    rate_limit_per_minute: int = Field(description="Requests per minute, per API key.")
    max_jobs_in_flight: int = Field(description="Jobs QUEUED or PROCESSING at once.")
    scheduling_weight: int = Field(
        description="Share of the GPUs while several accounts have jobs queued: weight 2 "
        "gets twice the GPU work of weight 1 (docs/scheduling.md)."
    )
    max_url_fetches: int = Field(description="Image URL fetches at once, per API process.")
    max_streams: int = Field(
        description="Event streams and v1 waits open at once, per API process."
    )


class LimitOverrides(BaseModel):
    """The account's own values; null = the service default."""

    rate_limit_per_minute: int | None
    max_jobs_in_flight: int | None
    scheduling_weight: int | None
    max_url_fetches: int | None
    max_streams: int | None


class LedgerEntryView(BaseModel):
    id: int
    amount: int
    reason: LedgerReason
    job_id: uuid.UUID | None
    note: str | None
    created_at: datetime


class AccountView(BaseModel):
    id: uuid.UUID
    name: str
    status: AccountStatus
    balance: int
    created_at: datetime
    limits: LimitsView
    limit_overrides: LimitOverrides


class AccountDetail(AccountView):
    jobs_in_flight: int
    active_keys: int
    recent_ledger: list[LedgerEntryView] = Field(description="Newest first, at most 20.")


class AccountPage(BaseModel):
    accounts: list[AccountView]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class KeyView(BaseModel):
    id: uuid.UUID
    account_id: uuid.UUID
    name: str | None
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    revoked_at: datetime | None


class NewKeyView(KeyView):
    api_key: str = Field(description="The key itself. Shown this once; only its hash is kept.")


class KeyList(BaseModel):
    keys: list[KeyView]


class CreatedAccount(BaseModel):
    account: AccountView
    api_key: NewKeyView


class CreditsChanged(BaseModel):
    account: AccountView
    entry: LedgerEntryView


# --- request bodies -------------------------------------------------------------------


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


# --- builders ---------------------------------------------------------------------------


def limits_view(in_force: limits.Limits) -> LimitsView:
    return LimitsView(**dataclasses.asdict(in_force))


def account_view(account: Account, settings: Settings) -> AccountView:
    in_force = limits.effective_limits(account, settings)
    return AccountView(
        id=account.id,
        name=account.name,
        status=account.status,
        balance=account.balance,
        created_at=account.created_at,
        limits=limits_view(in_force),
        limit_overrides=LimitOverrides(
            rate_limit_per_minute=account.rate_limit_per_minute,
            max_jobs_in_flight=account.max_jobs_in_flight,
            scheduling_weight=account.scheduling_weight,
            max_url_fetches=account.max_url_fetches,
            max_streams=account.max_streams,
        ),
    )


def key_view(key: ApiKey) -> KeyView:
    return KeyView(
        id=key.id,
        account_id=key.account_id,
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


def new_key_view(new: NewApiKey) -> NewKeyView:
    return NewKeyView(**key_view(new.key).model_dump(), api_key=new.raw)


def ledger_entry_view(entry: CreditLedgerEntry) -> LedgerEntryView:
    return LedgerEntryView(
        id=entry.id,
        amount=entry.amount,
        reason=entry.reason,
        job_id=entry.job_id,
        note=entry.note,
        created_at=entry.created_at,
    )


def account_detail(session: Session, account: Account, settings: Settings) -> AccountDetail:
    return AccountDetail(
        **account_view(account, settings).model_dump(),
        jobs_in_flight=limits.jobs_in_flight(session, account.id),
        active_keys=account_admin.active_key_count(session, account.id),
        recent_ledger=[
            ledger_entry_view(e) for e in account_admin.recent_ledger(session, account.id)
        ],
    )
