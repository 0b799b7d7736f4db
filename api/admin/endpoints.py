"""The operator's API: accounts, credits, keys, suspension and per-account limits.

Every route needs `Authorization: Bearer <ADMIN_TOKEN>` (api/admin/auth.py). The work
is done by common.account_admin, which the CLI calls too.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status

from api.admin import schemas
from api.admin.auth import require_admin
from api.deps import SessionDep, SettingsDep
from api.errors import ErrorBody, error_responses
from common import account_admin
from common import account_views as views
from common.models import AccountStatus, LedgerReason

_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **error_responses(400),
    401: {"model": ErrorBody, "description": "Missing or wrong admin token."},
    503: {"model": ErrorBody, "description": "Admin API disabled: ADMIN_TOKEN is not set."},
}
_WITH_404 = {**_ADMIN_ERRORS, 404: {"model": ErrorBody, "description": "Unknown account or key."}}

router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=_ADMIN_ERRORS
)


@router.post(
    "/accounts",
    status_code=status.HTTP_201_CREATED,
    response_model=views.CreatedAccount,
)
def create_account(
    body: schemas.CreateAccountBody, session: SessionDep, settings: SettingsDep
) -> views.CreatedAccount:
    """Create an account and its first API key; the key is shown in this answer only."""
    account, key = account_admin.create_account(session, body.name, body.credits)
    return views.CreatedAccount(
        account=views.account_view(account, settings), api_key=views.new_key_view(key)
    )


@router.get("/accounts", response_model=views.AccountPage)
def list_accounts(
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    status: Annotated[AccountStatus | None, Query(description="Only this status.")] = None,
) -> views.AccountPage:
    """Accounts, newest first."""
    page = account_admin.list_accounts(session, limit=limit, cursor=cursor, status=status)
    return views.AccountPage(
        accounts=[views.account_view(a, settings) for a in page.accounts],
        next_cursor=page.next_cursor,
    )


@router.get("/accounts/{account_id}", response_model=views.AccountDetail, responses=_WITH_404)
def get_account(
    account_id: uuid.UUID, session: SessionDep, settings: SettingsDep
) -> views.AccountDetail:
    """One account, with its jobs in flight, active keys and newest ledger entries."""
    account = account_admin.get_account(session, account_id)
    return views.account_detail(account, account_admin.account_facts(session, account.id), settings)


@router.post(
    "/accounts/{account_id}/credits",
    response_model=views.CreditsChanged,
    responses={**_WITH_404, 409: {"model": ErrorBody, "description": "Would overdraw."}},
)
def add_credits(
    account_id: uuid.UUID,
    body: schemas.AddCreditsBody,
    session: SessionDep,
    settings: SettingsDep,
) -> views.CreditsChanged:
    """A grant (positive), or an adjustment of either sign with a note; one ledger entry."""
    account, entry = account_admin.add_credits(
        session, account_id, body.amount, LedgerReason(body.reason), body.note
    )
    return views.CreditsChanged(
        account=views.account_view(account, settings),
        entry=views.ledger_entry_view(entry),
    )


@router.post(
    "/accounts/{account_id}/suspend", response_model=views.AccountView, responses=_WITH_404
)
def suspend_account(
    account_id: uuid.UUID, session: SessionDep, settings: SettingsDep
) -> views.AccountView:
    """Refuse every API call of the account (403) until reactivated; its keys stay."""
    return _set_status(session, settings, account_id, AccountStatus.SUSPENDED)


@router.post(
    "/accounts/{account_id}/reactivate", response_model=views.AccountView, responses=_WITH_404
)
def reactivate_account(
    account_id: uuid.UUID, session: SessionDep, settings: SettingsDep
) -> views.AccountView:
    return _set_status(session, settings, account_id, AccountStatus.ACTIVE)


@router.patch(
    "/accounts/{account_id}/limits", response_model=views.AccountView, responses=_WITH_404
)
def set_limits(
    account_id: uuid.UUID,
    body: schemas.SetLimitsBody,
    session: SessionDep,
    settings: SettingsDep,
) -> views.AccountView:
    """Set the fields sent; null returns a limit to the service default. Takes effect
    at the account's next request."""
    changes: dict[str, Any] = {name: getattr(body, name) for name in body.model_fields_set}
    account = account_admin.set_limits(session, account_id, **changes)
    return views.account_view(account, settings)


@router.post(
    "/accounts/{account_id}/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=views.NewKeyView,
    responses=_WITH_404,
)
def create_key(
    account_id: uuid.UUID, body: schemas.CreateKeyBody, session: SessionDep
) -> views.NewKeyView:
    """A new API key; the key is shown in this answer only."""
    key = account_admin.create_key(session, account_id, body.name)
    return views.new_key_view(key)


@router.get("/accounts/{account_id}/keys", response_model=views.KeyList, responses=_WITH_404)
def list_keys(account_id: uuid.UUID, session: SessionDep) -> views.KeyList:
    """The account's keys, revoked ones included: prefixes, never the keys or hashes."""
    keys = account_admin.list_keys(session, account_id)
    return views.KeyList(keys=[views.key_view(k) for k in keys])


@router.post("/keys/{key_id}/revoke", response_model=views.KeyView, responses=_WITH_404)
def revoke_key(key_id: uuid.UUID, session: SessionDep) -> views.KeyView:
    """Revoke a key for good (401 from its next request on); repeating it is harmless."""
    key = account_admin.revoke_key(session, key_id)
    return views.key_view(key)


def _set_status(
    session: SessionDep, settings: SettingsDep, account_id: uuid.UUID, new: AccountStatus
) -> views.AccountView:
    account = account_admin.set_status(session, account_id, new)
    return views.account_view(account, settings)
