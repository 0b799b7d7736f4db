"""Accounts and API keys. Functions here never commit: the caller's scope does."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, joinedload

from common import credits
from common.models import Account, AccountStatus, ApiKey

KEY_PREFIX = "sk_"
_PREFIX_CHARS = 11  # "sk_" + 8 characters: enough to tell keys apart, useless to guess


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class NewApiKey:
    """A key as created: `raw` is shown exactly once and never stored."""

    key: ApiKey
    raw: str


def create_account(session: Session, name: str, initial_credits: int = 0) -> Account:
    account = Account(name=name, balance=0, status=AccountStatus.ACTIVE)
    session.add(account)
    session.flush()
    if initial_credits:
        credits.grant(session, account.id, initial_credits, note="initial credits")
    return account


def create_api_key(session: Session, account_id: uuid.UUID, name: str | None = None) -> NewApiKey:
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        account_id=account_id, name=name, prefix=raw[:_PREFIX_CHARS], key_hash=hash_key(raw)
    )
    session.add(key)
    session.flush()
    return NewApiKey(key=key, raw=raw)


def authenticate(session: Session, raw_key: str) -> Account | None:
    """The active account owning this unrevoked key, or None."""
    row = session.execute(
        select(Account)
        .join(ApiKey, ApiKey.account_id == Account.id)
        .where(ApiKey.key_hash == hash_key(raw_key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None or row.status != AccountStatus.ACTIVE:
        return None
    return row


def find_key(session: Session, raw_key: str) -> ApiKey | None:
    """The key row for this raw key, revoked or not, with its account loaded; None if
    unknown. Lets the API say *why* a request is refused (revoked key, suspended
    account), which a holder of the raw key may know; `authenticate` is the yes/no."""
    return session.execute(_FIND_KEY, {"key_hash": hash_key(raw_key)}).scalar_one_or_none()


# Read at every request: built once, so SQLAlchemy derives its cache key once too.
_FIND_KEY = (
    select(ApiKey)
    .options(joinedload(ApiKey.account))
    .where(ApiKey.key_hash == bindparam("key_hash"))
)


def key_states(
    session: Session, key_ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[datetime | None, AccountStatus]]:
    """(revoked_at, the account's status) of each of `key_ids` that still exists: one
    query, for the sweeps that end the streams and waits of keys no longer usable."""
    rows = session.execute(
        select(ApiKey.id, ApiKey.revoked_at, Account.status)
        .join(Account, Account.id == ApiKey.account_id)
        .where(ApiKey.id.in_(key_ids))
    )
    return {key_id: (revoked_at, status) for key_id, revoked_at, status in rows}
