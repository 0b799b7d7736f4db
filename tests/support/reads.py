"""Reads straight from PostgreSQL, the source of truth, for tests to check what the
service did (balances, ledgers, jobs) and the migrations' configuration."""

from __future__ import annotations

import uuid

from alembic.config import Config
from sqlalchemy import ColumnElement, func, select

from common.db import session_scope
from common.models import Account, CreditLedgerEntry, Job, LedgerReason
from tests.support.live import ROOT


def ledger_sum(account_id: str) -> int:
    with session_scope() as session:
        total = session.execute(
            select(func.coalesce(func.sum(CreditLedgerEntry.amount), 0)).where(
                CreditLedgerEntry.account_id == uuid.UUID(account_id)
            )
        ).scalar_one()
    return int(total)


def balance(account_id: str) -> int:
    with session_scope() as session:
        account = session.get(Account, uuid.UUID(account_id))
        assert account is not None
        return account.balance


def load_job(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        return job


def ledger_of(job_id: str) -> list[tuple[LedgerReason, int]]:
    return ledger(CreditLedgerEntry.job_id == uuid.UUID(job_id))


def ledger(
    condition: ColumnElement[bool], url: str | None = None
) -> list[tuple[LedgerReason, int]]:
    """(reason, amount) of the ledger entries matching `condition`, oldest first; in
    the database at `url` (a stack of a test's own) or this process's."""
    with session_scope(url) as session:
        rows = session.execute(
            select(CreditLedgerEntry.reason, CreditLedgerEntry.amount)
            .where(condition)
            .order_by(CreditLedgerEntry.id)
        ).all()
    return [(reason, amount) for reason, amount in rows]


def account_state(account_id: str) -> tuple[int, int]:
    """(balance, number of jobs), read from PostgreSQL, the source of truth."""
    with session_scope() as session:
        account = session.get(Account, uuid.UUID(account_id))
        assert account is not None
        jobs = session.execute(
            select(func.count()).select_from(Job).where(Job.account_id == account.id)
        ).scalar_one()
        return account.balance, int(jobs)


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logger"] = False
    return config
