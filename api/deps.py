"""FastAPI dependencies, as `Annotated` aliases used in endpoint signatures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import ratelimit
from api.errors import ApiError
from common import accounts
from common.db import autocommit_session, get_session_factory
from common.models import Account, AccountStatus, ApiKey
from common.settings import Settings, get_settings
from common.storage import Storage, get_storage


async def get_session() -> AsyncIterator[Session]:
    """The request's unit of work: one session, committed here once the endpoint has
    returned and before its response is sent (`scope="function"` below), rolled back
    if it raised (a refusal included). Endpoints never commit; the side effects that
    transitions registered (common/after_commit.py) leave with this commit.

    Made and closed on the event loop, not in the threadpool: a session touches the
    database only when used (in the endpoint's thread). Only one holding a transaction
    is committed or closed in a thread, as that goes over the network. Each threadpool
    hop costs a status poll measurably (docs/performance.md)."""
    session = get_session_factory()()
    try:
        yield session
        if session.in_transaction():
            await run_in_threadpool(session.commit)
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)  # rolls back
        else:
            session.close()


async def _settings() -> Settings:
    return get_settings()  # async: a cached value needs no threadpool hop


async def _storage() -> Storage:
    return get_storage()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(_settings)]
StorageDep = Annotated[Storage, Depends(_storage)]


def set_remaining_credits(request: Request, balance: int) -> None:
    """Recorded on the request; a middleware puts it on every authenticated response,
    error responses included."""
    request.state.remaining_credits = balance


ApiKeyHeader = Annotated[str | None, Header(alias="x-api-key", description="Your API key.")]


def check_key(session: Session, raw_key: str | None) -> ApiKey:
    """The caller's key, its account loaded: 401 for a missing, unknown or revoked key,
    403 for a suspended account. Counts nothing: see `enforce_rate_limit`."""
    if not raw_key:
        raise ApiError(401, MISSING_KEY)
    return usable_key(accounts.find_key(session, raw_key))


MISSING_KEY = "missing API key: send it in the x-api-key header"
INVALID_KEY = "invalid API key"


def usable_key(key: ApiKey | None) -> ApiKey:
    """`key` if it may be used: 401 when unknown (None) or revoked, 403 when its account
    is suspended."""
    if key is None:
        raise ApiError(401, INVALID_KEY)
    refuse_unusable(key.revoked_at, key.account.status)
    return key


def refuse_unusable(revoked_at: datetime | None, account_status: AccountStatus) -> None:
    """401 for a revoked key, 403 for a suspended account."""
    refusal = refusal_of(revoked_at, account_status)
    if refusal is not None:
        raise refusal


def refusal_of(revoked_at: datetime | None, account_status: AccountStatus) -> ApiError | None:
    if revoked_at is not None:
        return ApiError(401, "API key revoked: ask the operator for a new key")
    if account_status != AccountStatus.ACTIVE:
        return ApiError(403, "account suspended: ask the operator to reactivate it")
    return None


def refused_keys(key_ids: list[uuid.UUID]) -> dict[uuid.UUID, ApiError]:
    """Which of `key_ids` may no longer be used (revoked, suspended account, deleted),
    with the refusal each now gets: one query, for the sweeps that end the open streams
    and v1 waits of such keys (api/job_events.py, api/job_waiters.py)."""
    with autocommit_session() as session:
        states = accounts.key_states(session, key_ids)
    refused = {key_id: ApiError(401, INVALID_KEY) for key_id in key_ids}  # deleted: unknown
    for key_id, (revoked_at, status) in states.items():
        refusal = refusal_of(revoked_at, status)
        if refusal is None:
            del refused[key_id]
        else:
            refused[key_id] = refusal
    return refused


@dataclass(frozen=True, slots=True)
class CallerKey:
    """What the rate limit and the credits header need of a usable key."""

    key_id: uuid.UUID
    balance: int  # the account's, for x-remaining-credits
    rate_limit_per_minute: int | None  # the account's own; None: the settings' default

    @classmethod
    def of(cls, key: ApiKey) -> CallerKey:
        return cls(key.id, key.account.balance, key.account.rate_limit_per_minute)


def enforce_rate_limit(request: Request, key: CallerKey, settings: Settings) -> None:
    """Count this request against `key` (a Redis round trip: call it with no database
    connection held); 429 past its rate. Also records `x-remaining-credits`."""
    set_remaining_credits(request, key.balance)
    rate = key.rate_limit_per_minute
    ratelimit.enforce(
        request, key.key_id, settings.default_rate_limit_per_minute if rate is None else rate
    )


def current_account(
    request: Request, settings: SettingsDep, x_api_key: ApiKeyHeader = None
) -> Account:
    """The caller's account (`check_key`, then `enforce_rate_limit`); loaded, detached.

    Read in autocommit on a connection of its own, given back at once: no BEGIN and
    COMMIT round trips, and no connection held over the rate limiter's Redis round trip
    or between this threadpool call and the endpoint's (a connection held idle there,
    under a burst, leaves threads waiting on an empty pool while the holders wait for
    a thread)."""
    with autocommit_session() as session:
        key = check_key(session, x_api_key)
    enforce_rate_limit(request, CallerKey.of(key), settings)
    request.state.api_key_id = key.id  # for work that outlives this check (streams, waits)
    request.state.account_id = key.account_id  # the request's log line (api/observability.py)
    return key.account


def caller_key_id(request: Request) -> uuid.UUID:
    """The id of the key `current_account` checked for this request."""
    key_id: uuid.UUID = request.state.api_key_id
    return key_id


CurrentAccount = Annotated[Account, Depends(current_account)]
