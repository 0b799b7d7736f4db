"""Sending deliveries to the CPU queue, only ever after their rows are committed.

`send_after_commit(session, ids)` is what the job transitions use: the ids ride on the
session and go to the queue once its transaction commits (nothing goes if it rolls
back). A message that never arrives is no loss: the sweep finds the row in PostgreSQL.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from sqlalchemy import event
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

# Task names; the CPU worker registers them (common/webhooks/tasks.py). Not routed to
# the GPU queue: everything but RUN_JOB goes to the CPU queue (common/tasks.py).
DELIVER_WEBHOOK = "ssd_img2img.webhooks.deliver"
SWEEP_WEBHOOKS = "ssd_img2img.webhooks.sweep"

_PENDING = "webhook_deliveries_to_send"


def send_now(delivery_ids: Iterable[uuid.UUID]) -> None:
    """Queue an attempt of each delivery. Never raises: the sweep covers a failure."""
    from common.tasks import get_celery

    for delivery_id in delivery_ids:
        try:
            get_celery().send_task(DELIVER_WEBHOOK, args=[str(delivery_id)])
        except Exception:
            logger.warning("could not queue webhook delivery %s", delivery_id, exc_info=True)


def send_after_commit(session: Session, delivery_ids: Iterable[uuid.UUID]) -> None:
    """Queue these deliveries once `session`'s transaction commits."""
    pending: list[uuid.UUID] = session.info.setdefault(_PENDING, [])
    pending.extend(delivery_ids)
    if not event.contains(session, "after_commit", _after_commit):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_rollback", _after_rollback)


def _after_commit(session: Session) -> None:
    send_now(session.info.pop(_PENDING, []))


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)
