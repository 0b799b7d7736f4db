"""Per-tenant limits: an account's own values, or the settings' defaults where it has none.

A request rate per API key (enforced by the API with Redis, see api/ratelimit.py); a
cap on the account's jobs in flight (QUEUED + PROCESSING), enforced here, in PostgreSQL,
in the transaction that inserts the job; bounds of the account's open work in each API
process, image URL fetches and streams (api/open_work.py). With them, the account's
weight in the scheduler's fair order (common/scheduler.py; default 1).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from common.models import Account, Job, JobStatus
from common.refusals import TooMany
from common.settings import Settings

IN_FLIGHT_STATUSES = (JobStatus.QUEUED, JobStatus.PROCESSING)
# An account without a weight of its own counts as 1 (the trigger of migration 0007 too).
DEFAULT_SCHEDULING_WEIGHT = 1


@dataclass(frozen=True)
class Limits:
    rate_limit_per_minute: int
    max_jobs_in_flight: int
    scheduling_weight: int
    max_url_fetches: int  # image URL fetches at once, per API process
    max_streams: int  # event streams + v1 waits open at once, per API process


class TooManyJobsInFlight(TooMany):
    def __init__(self, cap: int) -> None:
        super().__init__(
            f"too many jobs in flight: this account may have at most {cap} jobs queued or "
            "processing at once; wait for one to finish, then submit again"
        )
        self.cap = cap


def effective_limits(account: Account, settings: Settings) -> Limits:
    return Limits(
        rate_limit_per_minute=_or_default(
            account.rate_limit_per_minute, settings.default_rate_limit_per_minute
        ),
        max_jobs_in_flight=_or_default(
            account.max_jobs_in_flight, settings.default_max_jobs_in_flight
        ),
        scheduling_weight=_or_default(account.scheduling_weight, DEFAULT_SCHEDULING_WEIGHT),
        max_url_fetches=_or_default(account.max_url_fetches, settings.default_max_url_fetches),
        max_streams=_or_default(account.max_streams, settings.default_max_streams),
    )


# Statements of every submit, built once (SQLAlchemy then derives their cache keys
# once too). The statuses are written into the SQL, as in the partial index
# ix_jobs_account_id_in_flight, so that every plan of the count can use that index.
_IN_FLIGHT = (
    select(func.count())
    .select_from(Job)
    .where(
        Job.account_id == bindparam("account_id"),
        Job.status.in_(
            bindparam("statuses", IN_FLIGHT_STATUSES, expanding=True, literal_execute=True)
        ),
    )
)
_LOCK_ACCOUNT = (
    select(Account.max_jobs_in_flight)
    .where(Account.id == bindparam("account_id"))
    .with_for_update(key_share=True)
)


def jobs_in_flight(session: Session, account_id: uuid.UUID) -> int:
    return session.execute(_IN_FLIGHT, {"account_id": account_id}).scalar_one()


def check_jobs_in_flight(
    session: Session, account: Account, settings: Settings, *, lock: bool
) -> None:
    """Raise TooManyJobsInFlight when one more job would exceed the account's cap.

    With `lock=False` this is a cheap early refusal and nothing more: concurrent
    submits can all pass it. With `lock=True` it first locks the account row
    (`SELECT ... FOR NO KEY UPDATE`), so the submits of one account count one after
    another: each sees the jobs the previous ones committed (READ COMMITTED takes a new
    snapshot per statement). The caller must insert its job in the same transaction;
    the lock, the one the credit debit takes anyway, is held until that transaction
    ends. NO KEY UPDATE rather than UPDATE: it serialises submits and debits without
    blocking the foreign-key checks of other inserts (a worker's refund entry, say).
    """
    override = account.max_jobs_in_flight
    if lock:
        override = session.execute(_LOCK_ACCOUNT, {"account_id": account.id}).scalar_one()
    cap = _or_default(override, settings.default_max_jobs_in_flight)
    if jobs_in_flight(session, account.id) >= cap:
        raise TooManyJobsInFlight(cap)


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value
