"""Each account's webhook signing secrets, in PostgreSQL (common.models.WebhookSecret).

An account has one current secret, created when first needed. A rotation makes a new
current one; the old one keeps signing (a second signature) for the overlap, then
stops. A second rotation within an overlap ends the older secret at once: at most two
secrets sign at any time. Functions here never commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from common.models import Account, WebhookSecret
from common.webhooks.signing import generate_secret


@dataclass(frozen=True)
class SecretsInForce:
    current: str
    previous: str | None = None
    previous_expires_at: datetime | None = None

    def signing(self) -> list[str]:
        """The secrets that sign now, the current one first."""
        return [self.current] + ([self.previous] if self.previous else [])


def _current(session: Session, account_id: uuid.UUID) -> WebhookSecret | None:
    return session.execute(
        select(WebhookSecret).where(
            WebhookSecret.account_id == account_id, WebhookSecret.expires_at.is_(None)
        )
    ).scalar_one_or_none()


def ensure_current(session: Session, account_id: uuid.UUID) -> WebhookSecret:
    """The account's current secret, created if it has none (concurrent callers agree
    on one: the unique index on the current secret lets only one insert through)."""
    current = _current(session, account_id)
    if current is not None:
        return current
    session.execute(
        insert(WebhookSecret)
        .values(account_id=account_id, secret=generate_secret())
        .on_conflict_do_nothing(
            index_elements=["account_id"], index_where=WebhookSecret.expires_at.is_(None)
        )
    )
    current = _current(session, account_id)
    assert current is not None  # ours, or the one that won the race
    return current


def in_force(session: Session, account_id: uuid.UUID) -> SecretsInForce:
    """The secrets signing the account's webhooks now (the current one is created if
    needed)."""
    current = ensure_current(session, account_id)
    previous = session.execute(
        select(WebhookSecret)
        .where(
            WebhookSecret.account_id == account_id,
            WebhookSecret.expires_at > func.now(),
        )
        .order_by(WebhookSecret.expires_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    if previous is None:
        return SecretsInForce(current.secret)
    return SecretsInForce(current.secret, previous.secret, previous.expires_at)


def rotate(session: Session, account_id: uuid.UUID, overlap_seconds: int) -> SecretsInForce:
    """A new current secret; the one it replaces signs too for `overlap_seconds` (0:
    it stops at once, e.g. when it leaked)."""
    # Rotations of one account run one after the other.
    session.execute(select(Account.id).where(Account.id == account_id).with_for_update())
    old = ensure_current(session, account_id)
    # Any older secret still in its overlap stops now: at most two sign at once.
    session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.account_id == account_id, WebhookSecret.expires_at > func.now())
        .values(expires_at=func.now())
    )
    # now() is the transaction's start: with no overlap the old secret is over at once.
    session.execute(
        update(WebhookSecret)
        .where(WebhookSecret.id == old.id)
        .values(expires_at=func.now() + timedelta(seconds=overlap_seconds))
    )
    session.execute(insert(WebhookSecret).values(account_id=account_id, secret=generate_secret()))
    session.expire(old)  # changed behind the identity map's back
    return in_force(session, account_id)
