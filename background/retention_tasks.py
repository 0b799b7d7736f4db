"""Periodic retention tasks of the CPU worker (the work itself: common/retention.py).

Every replica's embedded beat sends these; concurrent runs share the work through
PostgreSQL row locks. A tick not started within one interval is dropped (`expires`):
after an outage the worker runs one sweep, not one per tick missed.
"""

from __future__ import annotations

from typing import Any

from background import metrics
from common import retention
from common.settings import get_settings
from common.tasks import get_celery

SWEEP_EXPIRED = "ssd_img2img.retention.sweep_expired"
SWEEP_ORPHANED_INPUTS = "ssd_img2img.retention.sweep_orphaned_inputs"

app = get_celery()


@app.task(name=SWEEP_EXPIRED, ignore_result=True)
def sweep_expired() -> int:
    deleted = len(retention.sweep())
    metrics.retained("expired_job", deleted)
    return deleted


@app.task(name=SWEEP_ORPHANED_INPUTS, ignore_result=True)
def sweep_orphaned_inputs() -> int:
    deleted = len(retention.sweep_orphaned_inputs())
    metrics.retained("orphaned_input", deleted)
    return deleted


def _every(seconds: float, task: str) -> dict[str, Any]:
    return {"task": task, "schedule": seconds, "options": {"expires": seconds}}


_settings = get_settings()
BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "retention-sweep-expired": _every(_settings.retention_sweep_seconds, SWEEP_EXPIRED),
    "retention-sweep-orphaned-inputs": _every(
        _settings.orphan_sweep_seconds, SWEEP_ORPHANED_INPUTS
    ),
}
