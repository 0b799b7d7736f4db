"""Sending deliveries to the CPU queue, only ever after their rows are committed.

`send_after_commit(session, ids)` is what the job transitions use: the ids go to the
queue once the session's transaction commits, nothing goes if it rolls back
(common/after_commit.py). A message that never arrives is no loss: the sweep finds the
row in PostgreSQL.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from functools import partial

from sqlalchemy.orm import Session

from common.after_commit import after_commit

logger = logging.getLogger(__name__)

# Task names; the CPU worker registers them (background/webhook_tasks.py). Not routed to
# the GPU queue: everything but WAKE_GPU goes to the CPU queue (common/tasks.py).
DELIVER_WEBHOOK = "ssd_img2img.webhooks.deliver"
SWEEP_WEBHOOKS = "ssd_img2img.webhooks.sweep"


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
    after_commit(session, partial(send_now, list(delivery_ids)))
