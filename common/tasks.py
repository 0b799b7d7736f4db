"""The Celery app and task names, shared by the API (sender) and the workers.

PostgreSQL is the queue of record (common/scheduler.py): a GPU worker takes its next
work with a claim there, in the fair order, never "the job a message names". GPU
messages are only wake-ups, sent after the commit that queued work: one lost (Redis
flushed, restarted, unreachable) costs at most WORKER_POLL_SECONDS, since an idle
worker looks at PostgreSQL that often anyway; one repeated wakes a worker that finds
nothing, or the next job. Senders use `send_task` by name, so the API never imports
the worker (and so never imports torch).
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache, partial

from celery import Celery
from sqlalchemy.orm import Session

from common.after_commit import after_commit, state
from common.settings import get_settings

logger = logging.getLogger(__name__)

# The GPU workers' wake-up. The name is the one messages had when they named the job to
# run; such a message (from an API of the release before) still only wakes a worker.
WAKE_GPU = "ssd_img2img.run_job"
# Wake-ups sent at most per transaction: more jobs than that are found by the workers
# that are already awake, which claim again as soon as they finish.
MAX_WAKEUPS = 64


@lru_cache
def get_celery() -> Celery:
    settings = get_settings()
    app = Celery("ssd_img2img", broker=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in PostgreSQL, not in a result backend
        # Only WAKE_GPU goes to the GPU queue; everything else is CPU work.
        task_routes={WAKE_GPU: {"queue": settings.gpu_queue}},
        task_default_queue=settings.cpu_queue,
        # A GPU worker's wake-ups return at once; prefetching more would only hold
        # messages another idle worker could use.
        worker_prefetch_multiplier=1,
        # Long jobs, crash-safe (docs/reliability.md). A message is acknowledged only once
        # its task returned, so a worker that dies mid-job leaves it in Redis...
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # ...from where it is delivered again after the visibility timeout, even if its
        # job still runs: hence longer than the longest job. Recovery does not wait for
        # it: the worker's lease in PostgreSQL expires in LEASE_SECONDS and the
        # reconciler re-sends the job; this redelivery is a late duplicate, dropped by
        # the claim.
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        # Publishing while Redis is down must not hold an API request for long: the job
        # is already committed, and the reconciler dispatches QUEUED jobs whose message
        # never left. Try briefly, then give up.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        broker_connection_timeout=2,
        worker_hijack_root_logger=False,
    )
    return app


def wake_gpu_workers(queue: str | None = None, count: int = 1) -> None:
    """Send `count` wake-ups to the GPU workers of `queue` (default GPU_QUEUE). Call
    after the commit that queued the work. Never raises: the workers poll anyway."""
    queue = queue or get_settings().gpu_queue
    try:
        for _ in range(min(count, MAX_WAKEUPS)):
            get_celery().send_task(WAKE_GPU, queue=queue)
    except Exception:
        logger.warning(
            "could not wake the GPU workers of queue %s; they find the work when they "
            "next poll PostgreSQL",
            queue,
            exc_info=True,
        )


def wake_after_commit(session: Session, queue: str, count: int = 1) -> None:
    """Wake the GPU workers of `queue` once `session`'s transaction commits: one
    wake-up per job the transaction queued there (up to MAX_WAKEUPS)."""
    counts = state(session, WAKE_GPU, Counter[str])
    counts[queue] += count
    after_commit(session, partial(_wake_counted, counts), once=WAKE_GPU)


def _wake_counted(counts: Counter[str]) -> None:
    for queue, count in counts.items():
        wake_gpu_workers(queue, count)
