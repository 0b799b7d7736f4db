"""Webhook tasks of the CPU worker (the work itself: common/webhooks/delivery.py).

`deliver` makes one attempt of one delivery; it is queued after the commit of the job
change that created the delivery, and by the sweep. The sweep runs on every replica's
embedded beat; SKIP LOCKED shares the rows and the delivery's claim stops a second
attempt, so a repeated or concurrent message never sends one attempt twice. A sweep
tick not started within one interval is dropped (`expires`).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from common.settings import get_settings
from common.tasks import get_celery
from common.webhooks import delivery
from common.webhooks.queue import DELIVER_WEBHOOK, SWEEP_WEBHOOKS

logger = logging.getLogger(__name__)

app = get_celery()


@app.task(name=DELIVER_WEBHOOK, ignore_result=True)
def deliver(delivery_id: str) -> None:
    try:
        parsed = uuid.UUID(delivery_id)
    except (ValueError, TypeError):
        logger.warning("webhook delivery message with a bad id %r dropped", delivery_id)
        return
    delivery.deliver(parsed)


@app.task(name=SWEEP_WEBHOOKS, ignore_result=True)
def sweep() -> int:
    return len(delivery.sweep())


_interval = get_settings().webhook_sweep_interval_seconds
BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "webhooks-sweep": {
        "task": SWEEP_WEBHOOKS,
        "schedule": _interval,
        "options": {"expires": _interval},
    },
}
