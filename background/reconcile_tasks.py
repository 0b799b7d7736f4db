"""The reconciler as a periodic task of the CPU worker (the work: common/reconcile.py).

Every replica's embedded beat sends it every RECONCILE_INTERVAL_SECONDS; concurrent runs
share the work through PostgreSQL row locks (`FOR UPDATE SKIP LOCKED`). A tick not
started within one interval is dropped (`expires`): after an outage the worker runs
one pass, not one per tick missed.
"""

from __future__ import annotations

from typing import Any

from background import metrics
from common import reconcile
from common.settings import get_settings
from common.tasks import get_celery

RECONCILE = "ssd_img2img.reconcile"

app = get_celery()


@app.task(name=RECONCILE, ignore_result=True)
def reconcile_jobs() -> dict[str, object]:
    report = reconcile.reconcile()
    metrics.reconciled(report)
    return report.as_dict()


_interval = get_settings().reconcile_interval_seconds
BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "reconcile-jobs": {
        "task": RECONCILE,
        "schedule": _interval,
        "options": {"expires": _interval},
    },
}
