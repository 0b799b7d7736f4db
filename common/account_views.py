"""What the operator's /admin API answers and the CLI (`ssd-img2img accounts ... --json`)
prints: one shape for both, built from the rows here.

A key's hash is never part of any of them, and its raw value only of the answer that
creates it.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from common import limits
from common.account_admin import AccountFacts
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


def account_detail(account: Account, facts: AccountFacts, settings: Settings) -> AccountDetail:
    return AccountDetail(
        **account_view(account, settings).model_dump(),
        jobs_in_flight=facts.jobs_in_flight,
        active_keys=facts.active_keys,
        recent_ledger=[ledger_entry_view(e) for e in facts.recent_ledger],
    )
