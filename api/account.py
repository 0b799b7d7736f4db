"""`GET /v1/account`: the caller's own account, limits and newest ledger entries."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.deps import CurrentAccount, SessionDep, SettingsDep
from api.errors import error_responses
from common import account_admin, limits
from common.account_views import LimitsView, limits_view
from common.models import AccountStatus, LedgerReason

router = APIRouter(tags=["account"])

RECENT_LEDGER_ENTRIES = 20


class AccountLedgerEntry(BaseModel):
    amount: int = Field(description="Credits; negative = a charge.")
    reason: LedgerReason
    job_id: uuid.UUID | None = Field(description="The request charged or refunded, if any.")
    created_at: datetime


class AccountResponse(BaseModel):
    id: uuid.UUID
    name: str
    status: AccountStatus
    balance: int
    limits: LimitsView
    jobs_in_flight: int
    recent_ledger: list[AccountLedgerEntry] = Field(
        description=f"Newest first, at most {RECENT_LEDGER_ENTRIES}."
    )


@router.get("/v1/account", response_model=AccountResponse, responses=error_responses(401, 403, 429))
def get_account(
    session: SessionDep, settings: SettingsDep, account: CurrentAccount
) -> AccountResponse:
    in_force = limits.effective_limits(account, settings)
    # Everything below is read by the caller's own account id: nothing of another tenant.
    entries = account_admin.recent_ledger(session, account.id, RECENT_LEDGER_ENTRIES)
    return AccountResponse(
        id=account.id,
        name=account.name,
        status=account.status,
        balance=account.balance,
        limits=limits_view(in_force),
        jobs_in_flight=limits.jobs_in_flight(session, account.id),
        recent_ledger=[
            AccountLedgerEntry(
                amount=e.amount, reason=e.reason, job_id=e.job_id, created_at=e.created_at
            )
            for e in entries
        ],
    )
