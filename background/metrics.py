"""The background worker's metrics (common/metrics.py has what every process exports):
webhook attempts and delivery lag, the reconciler's actions, retention's deletions,
and the queue gauges of the whole deployment.

The queue gauges (`ssd_img2img_jobs_queued`, `..._jobs_processing`,
`..._oldest_queued_job_age_seconds`, per GPU pool) are read from PostgreSQL, the queue
of record, at each scrape: one query over the `(status, ...)` indexes. They come from
the background worker only, not from every API and GPU pod; run it as one replica (or
aggregate with `max by (queue)`, as the dashboard does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text

from common.db import session_scope
from common.metrics import PREFIX, dependency_error
from common.reconcile import ReconcileReport
from common.settings import get_settings
from common.webhooks import delivery

logger = logging.getLogger(__name__)

WEBHOOK_ATTEMPTS = Counter(
    f"{PREFIX}_webhook_attempts",
    "Webhook delivery attempts, by outcome: delivered (2xx) or failed (anything else; "
    "the delivery may be retried).",
    ["outcome"],
)
WEBHOOK_LAG = Histogram(
    f"{PREFIX}_webhook_delivery_lag_seconds",
    "From a webhook delivery's creation (the job's change) to its successful attempt.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)
RECONCILER_ACTIONS = Counter(
    f"{PREFIX}_reconciler_actions",
    "Jobs the reconciler acted on, by action (requeued, failed, cancelled, redispatched).",
    ["action"],
)
RETENTION_DELETIONS = Counter(
    f"{PREFIX}_retention_deletions",
    "What retention deleted, by kind (expired_job: a job's objects; orphaned_input).",
    ["kind"],
)

_QUEUES = text(
    """
    SELECT queue,
           count(*) FILTER (WHERE status = 'QUEUED') AS queued,
           count(*) FILTER (WHERE status = 'PROCESSING') AS processing,
           extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'QUEUED'))
    FROM jobs
    WHERE status IN ('QUEUED', 'PROCESSING')
    GROUP BY queue
    """
)


class QueueCollector(Collector):
    """The queue gauges, read at each scrape (a scrape during an outage of PostgreSQL
    reports none, and counts the error)."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        queued = GaugeMetricFamily(
            f"{PREFIX}_jobs_queued", "Jobs waiting for a GPU worker, per pool.", labels=["queue"]
        )
        processing = GaugeMetricFamily(
            f"{PREFIX}_jobs_processing", "Jobs being generated, per pool.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            f"{PREFIX}_oldest_queued_job_age_seconds",
            "Age of the oldest waiting job, per pool (0 when none waits).",
            labels=["queue"],
        )
        try:
            with session_scope() as session:
                rows = session.execute(_QUEUES).all()
        except Exception as exc:
            dependency_error("postgres")
            logger.warning("queue metrics: PostgreSQL unavailable (%s)", type(exc).__name__)
            return []
        # The configured pool always, at 0 when empty: a series that vanishes with
        # its last job leaves a dashboard showing the last non-zero value.
        pools = {get_settings().gpu_queue: (0, 0, None)}
        pools.update({queue: (waiting, running, age) for queue, waiting, running, age in rows})
        for queue, (waiting, running, age) in sorted(pools.items()):
            queued.add_metric([queue], float(waiting))
            processing.add_metric([queue], float(running))
            oldest.add_metric([queue], float(age or 0))
        return [queued, processing, oldest]


def _observe_attempt(attempt: delivery.ClaimedAttempt, result: delivery.AttemptResult) -> None:
    if result.verdict == "delivered":
        WEBHOOK_ATTEMPTS.labels(outcome="delivered").inc()
        if attempt.created_at is not None:
            lag = (datetime.now(UTC) - attempt.created_at).total_seconds()
            WEBHOOK_LAG.observe(max(lag, 0.0))
    else:
        WEBHOOK_ATTEMPTS.labels(outcome="failed").inc()


def reconciled(report: ReconcileReport) -> None:
    for action in ("requeued", "failed", "cancelled", "redispatched"):
        count = len(getattr(report, action))
        if count:
            RECONCILER_ACTIONS.labels(action=action).inc(count)


def retained(kind: str, deleted: int) -> None:
    if deleted:
        RETENTION_DELETIONS.labels(kind=kind).inc(deleted)


def install() -> None:
    """Start counting in this process: each series at 0, the webhook observer, and the
    queue gauges."""
    for outcome in ("delivered", "failed"):
        WEBHOOK_ATTEMPTS.labels(outcome=outcome)
    for action in ("requeued", "failed", "cancelled", "redispatched"):
        RECONCILER_ACTIONS.labels(action=action)
    for kind in ("expired_job", "orphaned_input"):
        RETENTION_DELETIONS.labels(kind=kind)
    delivery.ATTEMPT_OBSERVERS.append(_observe_attempt)
    REGISTRY.register(QueueCollector())
