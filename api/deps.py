"""FastAPI dependencies, as `Annotated` aliases used in endpoint signatures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api import ratelimit
from api.errors import ApiError
from common import accounts, limits
from common.db import get_session_factory
from common.models import Account, AccountStatus
from common.settings import Settings, get_settings
from common.storage import Storage, get_storage


def get_session() -> Iterator[Session]:
    """A session per request; endpoints commit explicitly, anything else rolls back."""
    session = get_session_factory()()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]


def set_remaining_credits(request: Request, balance: int) -> None:
    """Recorded on the request; a middleware puts it on every authenticated response,
    error responses included."""
    request.state.remaining_credits = balance


def current_account(
    session: SessionDep,
    request: Request,
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(description="Your API key.")] = None,
) -> Account:
    """The caller's account: 401 for a missing, unknown or revoked key, 403 for a
    suspended account, 429 past the key's request rate (api/ratelimit.py)."""
    if not x_api_key:
        raise ApiError(401, "missing API key: send it in the x-api-key header")
    key = accounts.find_key(session, x_api_key)
    if key is None:
        raise ApiError(401, "invalid API key")
    if key.revoked_at is not None:
        raise ApiError(401, "API key revoked: ask the operator for a new key")
    account = key.account
    if account.status != AccountStatus.ACTIVE:
        raise ApiError(403, "account suspended: ask the operator to reactivate it")
    # End the read transaction now, giving its pooled connection back: FastAPI runs this
    # dependency and the endpoint in separate threadpool calls, and a connection held
    # idle in between, under a burst, leaves threads waiting on an empty pool while the
    # holders wait for a thread. (expire_on_commit is off: `account` stays loaded.)
    session.commit()
    set_remaining_credits(request, account.balance)
    ratelimit.enforce(
        request, key.id, limits.effective_limits(account, settings).rate_limit_per_minute
    )
    return account


CurrentAccount = Annotated[Account, Depends(current_account)]
