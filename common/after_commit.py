"""Side effects that must follow a commit: the one way to run them.

Anything another process acts on (a GPU wake-up, a job-finished notice, a cancel flag,
webhook deliveries to send) must leave only once the rows it speaks of are committed,
or the receiver finds nothing (or the old state); and it must not leave at all if the
transaction rolls back. Code that changes those rows registers the side effect on its
session with `after_commit(session, action)` in the same place it makes the change:

- the session runs the actions, in the order registered, right after its transaction
  commits, each one on its own (an action that raises is logged and the next runs:
  they are hints and sends that PostgreSQL, the truth, makes up for if lost);
- a rollback drops them;
- `once=KEY` registers an action only once per transaction; `state(session, KEY,
  factory)` is an object that lives as long as the transaction, for actions that
  gather what the transaction did (wake-ups counted per pool).

Actions must not use the session: it is between transactions when they run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

_ACTIONS = "after_commit_actions"
_STATE = "after_commit_state"
T = TypeVar("T")


def after_commit(
    session: Session, action: Callable[[], None], *, once: Hashable | None = None
) -> None:
    """Run `action()` once `session`'s current transaction commits; never if it rolls back."""
    actions: dict[Hashable, Callable[[], None]] = session.info.setdefault(_ACTIONS, {})
    actions.setdefault(once if once is not None else object(), action)
    _listen(session)


def state(session: Session, key: Hashable, factory: Callable[[], T]) -> T:
    """The object under `key` for the current transaction of `session` (made by
    `factory` at first use); forgotten when the transaction commits or rolls back."""
    states: dict[Hashable, T] = session.info.setdefault(_STATE, {})
    _listen(session)
    if key not in states:
        states[key] = factory()
    return states[key]


def _listen(session: Session) -> None:
    if not event.contains(session, "after_commit", _run):
        event.listen(session, "after_commit", _run)
        event.listen(session, "after_rollback", _drop)


def _run(session: Session) -> None:
    session.info.pop(_STATE, None)
    for action in session.info.pop(_ACTIONS, {}).values():
        try:
            action()
        except Exception:
            logger.warning("an after-commit action failed: %r", action, exc_info=True)


def _drop(session: Session) -> None:
    session.info.pop(_ACTIONS, None)
    session.info.pop(_STATE, None)
