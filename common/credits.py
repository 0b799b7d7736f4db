"""The credit ledger. Every balance change is a ledger row plus the matching update of
`accounts.balance`, in the caller's transaction, so the two never disagree."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.models import Account, CreditLedgerEntry, Job, LedgerReason
from common.refusals import Refusal


class InsufficientCredits(Refusal):
    status_code = 406

    def __init__(self, cost: int, balance: int) -> None:
        super().__init__(f"not enough credits: this request costs {cost}, the balance is {balance}")
        self.cost = cost
        self.balance = balance


def job_cost(samples: int, num_inference_steps: int) -> int:
    return samples * num_inference_steps


def _change_balance(session: Session, account_id: uuid.UUID, amount: int) -> int | None:
    """Add `amount` (negative: take) unless that would go below zero; the new balance,
    or None when refused. One conditional UPDATE: concurrent changes serialise on the
    account row and none can overdraw."""
    return session.execute(
        update(Account)
        .where(Account.id == account_id, Account.balance + amount >= 0)
        .values(balance=Account.balance + amount)
        .returning(Account.balance)
        # Core-speed: no search of the session for Account objects to bring up to date
        # (callers use the balance returned; an Account read earlier keeps its value).
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()


def balance_of(session: Session, account_id: uuid.UUID) -> int:
    """The account's balance as this transaction sees it now."""
    return session.execute(select(Account.balance).where(Account.id == account_id)).scalar_one()


def grant(session: Session, account_id: uuid.UUID, amount: int, note: str | None = None) -> int:
    if amount <= 0:
        raise ValueError("a grant must be positive")
    balance = session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(balance=Account.balance + amount)
        .returning(Account.balance)
    ).scalar_one()
    session.add(
        CreditLedgerEntry(
            account_id=account_id, amount=amount, reason=LedgerReason.GRANT, note=note
        )
    )
    return balance


def debit_for_job(session: Session, account_id: uuid.UUID, job_id: uuid.UUID, cost: int) -> int:
    """Charge a job; returns the new balance or raises InsufficientCredits.

    One conditional UPDATE: concurrent debits serialise on the account row and none
    can take the balance below zero.
    """
    balance = _change_balance(session, account_id, -cost)
    if balance is None:
        raise InsufficientCredits(cost, balance_of(session, account_id))
    session.add(
        CreditLedgerEntry(
            account_id=account_id, job_id=job_id, amount=-cost, reason=LedgerReason.JOB_DEBIT
        )
    )
    return balance


def refund_job(session: Session, job: Job) -> bool:
    """Refund a job's cost exactly once (a unique index backs this); True if refunded now."""
    inserted = session.execute(
        insert(CreditLedgerEntry)
        .values(
            account_id=job.account_id,
            job_id=job.id,
            amount=job.cost,
            reason=LedgerReason.JOB_REFUND,
        )
        .on_conflict_do_nothing(
            index_elements=["job_id", "reason"], index_where=CreditLedgerEntry.job_id.isnot(None)
        )
        .returning(CreditLedgerEntry.id)
    ).scalar_one_or_none()
    if inserted is None:
        return False
    session.execute(
        update(Account)
        .where(Account.id == job.account_id)
        .values(balance=Account.balance + job.cost)
    )
    return True


class WouldOverdraw(Exception):
    def __init__(self, amount: int, balance: int) -> None:
        super().__init__(
            f"amount: {amount} would take the balance ({balance}) below zero; "
            f"the most that can be removed is {balance}"
        )
        self.amount = amount
        self.balance = balance


def operator_change(
    session: Session,
    account_id: uuid.UUID,
    amount: int,
    reason: LedgerReason,
    note: str | None = None,
) -> tuple[int, CreditLedgerEntry]:
    """An operator's grant or adjustment: returns (new balance, the ledger entry).

    Like a debit, one conditional UPDATE: a negative adjustment can never overdraw,
    whatever runs at the same time. Raises WouldOverdraw instead.
    """
    if reason not in (LedgerReason.GRANT, LedgerReason.ADJUSTMENT):
        raise ValueError(f"{reason} entries are written by jobs, not by operators")
    if amount == 0 or (reason == LedgerReason.GRANT and amount < 0):
        raise ValueError("a grant must be positive and an adjustment non-zero")
    balance = _change_balance(session, account_id, amount)
    if balance is None:
        raise WouldOverdraw(amount, balance_of(session, account_id))
    entry = CreditLedgerEntry(account_id=account_id, amount=amount, reason=reason, note=note)
    session.add(entry)
    session.flush()
    session.refresh(entry)  # created_at is the database's
    return balance, entry
