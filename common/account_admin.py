"""The operator's view of accounts and keys: shared by the /admin API and the CLI.

Functions here never commit: the request or command that opened the session does.
They raise refusals (common/refusals.py), which both front ends turn into messages.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session

from common import accounts, credits, cursors, limits
from common.models import Account, AccountStatus, ApiKey, CreditLedgerEntry, LedgerReason
from common.refusals import Conflict, InvalidInput, NotFound


class _Keep:
    """Marks a limit that `set_limits` leaves as it is (None means 'the default')."""


KEEP: Final = _Keep()

# Bounds one operator change, so a typo cannot overflow the 64-bit balance.
MAX_CREDIT_CHANGE = 10**12
# Bounds a per-account limit (the columns are 32-bit).
MAX_LIMIT_VALUE = 1_000_000
# Weights in the fair order: 1 (the default) to this.
MAX_SCHEDULING_WEIGHT = 1000


@dataclass(frozen=True)
class AccountPage:
    accounts: list[Account]
    next_cursor: str | None


def get_account(session: Session, account_id: uuid.UUID) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"account {account_id} not found")
    return account


def list_accounts(
    session: Session,
    *,
    limit: int,
    cursor: str | None = None,
    status: AccountStatus | None = None,
) -> AccountPage:
    """Accounts, newest first, in keyset pages on (created_at, id)."""
    query = select(Account)
    if status is not None:
        query = query.where(Account.status == status)
    if cursor:
        query = query.where(
            tuple_(Account.created_at, Account.id) < tuple_(*cursors.decode(cursor))
        )
    query = query.order_by(Account.created_at.desc(), Account.id.desc()).limit(limit + 1)
    rows = list(session.execute(query).scalars())
    page = rows[:limit]
    return AccountPage(
        page, cursors.encode(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    )


def create_account(
    session: Session, name: str, initial_credits: int
) -> tuple[Account, accounts.NewApiKey]:
    """An account with its first key; the key's raw value is shown once."""
    if not 0 <= initial_credits <= MAX_CREDIT_CHANGE:
        raise InvalidInput(f"credits: must be between 0 and {MAX_CREDIT_CHANGE}")
    account = accounts.create_account(session, name, initial_credits)
    key = accounts.create_api_key(session, account.id, name="default")
    session.refresh(account)  # created_at is the database's
    return account, key


def set_status(session: Session, account_id: uuid.UUID, status: AccountStatus) -> Account:
    """Suspend or reactivate. Suspension refuses the account's every API call at once;
    jobs it already submitted run to the end."""
    get_account(session, account_id)
    session.execute(update(Account).where(Account.id == account_id).values(status=status))
    return _reloaded(session, account_id)


def set_limits(
    session: Session,
    account_id: uuid.UUID,
    *,
    rate_limit_per_minute: int | _Keep | None = KEEP,
    max_jobs_in_flight: int | _Keep | None = KEEP,
    scheduling_weight: int | _Keep | None = KEEP,
    max_url_fetches: int | _Keep | None = KEEP,
    max_streams: int | _Keep | None = KEEP,
) -> Account:
    """Set an account's own limits; None returns a limit to the settings' default."""
    get_account(session, account_id)
    values: dict[str, int | None] = {}
    for name, value, most in (
        ("rate_limit_per_minute", rate_limit_per_minute, MAX_LIMIT_VALUE),
        ("max_jobs_in_flight", max_jobs_in_flight, MAX_LIMIT_VALUE),
        ("scheduling_weight", scheduling_weight, MAX_SCHEDULING_WEIGHT),
        ("max_url_fetches", max_url_fetches, MAX_LIMIT_VALUE),
        ("max_streams", max_streams, MAX_LIMIT_VALUE),
    ):
        if isinstance(value, _Keep):
            continue
        if value is not None and not 1 <= value <= most:
            raise InvalidInput(f"{name}: must be between 1 and {most} (or null for the default)")
        values[name] = value
    if values:
        session.execute(update(Account).where(Account.id == account_id).values(**values))
    return _reloaded(session, account_id)


def add_credits(
    session: Session,
    account_id: uuid.UUID,
    amount: int,
    reason: LedgerReason = LedgerReason.GRANT,
    note: str | None = None,
) -> tuple[Account, CreditLedgerEntry]:
    """A GRANT (positive) or an ADJUSTMENT (either sign, with a note saying why)."""
    get_account(session, account_id)
    if reason == LedgerReason.GRANT and amount <= 0:
        raise InvalidInput(
            "amount: a grant must be positive; remove credits with reason 'adjustment' and a note"
        )
    if reason == LedgerReason.ADJUSTMENT:
        if amount == 0:
            raise InvalidInput("amount: an adjustment must not be zero")
        if not (note and note.strip()):
            raise InvalidInput("note: an adjustment needs a note saying why")
    if reason not in (LedgerReason.GRANT, LedgerReason.ADJUSTMENT):
        raise InvalidInput("reason: must be 'grant' or 'adjustment'")
    if abs(amount) > MAX_CREDIT_CHANGE:
        raise InvalidInput(f"amount: at most {MAX_CREDIT_CHANGE} credits in one change")
    try:
        _, entry = credits.operator_change(session, account_id, amount, reason, note)
    except credits.WouldOverdraw as exc:
        raise Conflict(str(exc)) from exc
    return _reloaded(session, account_id), entry


def recent_ledger(
    session: Session, account_id: uuid.UUID, limit: int = 20
) -> list[CreditLedgerEntry]:
    """The account's newest ledger entries, newest first."""
    return list(
        session.execute(
            select(CreditLedgerEntry)
            .where(CreditLedgerEntry.account_id == account_id)
            .order_by(CreditLedgerEntry.id.desc())
            .limit(limit)
        ).scalars()
    )


def create_key(session: Session, account_id: uuid.UUID, name: str | None) -> accounts.NewApiKey:
    get_account(session, account_id)
    key = accounts.create_api_key(session, account_id, name=name)
    session.refresh(key.key)  # created_at is the database's
    return key


def list_keys(session: Session, account_id: uuid.UUID) -> list[ApiKey]:
    get_account(session, account_id)
    return list(
        session.execute(
            select(ApiKey)
            .where(ApiKey.account_id == account_id)
            .order_by(ApiKey.created_at, ApiKey.id)
        ).scalars()
    )


def active_key_count(session: Session, account_id: uuid.UUID) -> int:
    return session.execute(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.account_id == account_id, ApiKey.revoked_at.is_(None))
    ).scalar_one()


@dataclass(frozen=True)
class AccountFacts:
    """What an operator sees of an account beyond its row (`ssd-img2img accounts show`)."""

    jobs_in_flight: int
    active_keys: int
    recent_ledger: list[CreditLedgerEntry]  # newest first


def account_facts(session: Session, account_id: uuid.UUID) -> AccountFacts:
    return AccountFacts(
        jobs_in_flight=limits.jobs_in_flight(session, account_id),
        active_keys=active_key_count(session, account_id),
        recent_ledger=recent_ledger(session, account_id),
    )


def revoke_key(session: Session, key_id: uuid.UUID) -> ApiKey:
    """Revoke a key for good; revoking it again changes nothing (idempotent)."""
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    key = session.execute(
        select(ApiKey).where(ApiKey.id == key_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if key is None:
        raise NotFound(f"API key {key_id} not found")
    return key


def _reloaded(session: Session, account_id: uuid.UUID) -> Account:
    # The UPDATEs above bypass the identity map: read the row again.
    return session.execute(
        select(Account).where(Account.id == account_id).execution_options(populate_existing=True)
    ).scalar_one()
