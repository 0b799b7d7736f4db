"""FastAPI dependencies, as `Annotated` aliases used in endpoint signatures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.errors import ApiError
from common import accounts
from common.db import get_session_factory
from common.models import Account
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
    x_api_key: Annotated[str | None, Header(description="Your API key.")] = None,
) -> Account:
    if not x_api_key:
        raise ApiError(401, "missing API key: send it in the x-api-key header")
    account = accounts.authenticate(session, x_api_key)
    if account is None:
        raise ApiError(401, "invalid API key")
    set_remaining_credits(request, account.balance)
    return account


CurrentAccount = Annotated[Account, Depends(current_account)]
