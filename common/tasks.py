"""The Celery app and task names, shared by the API (sender) and the worker (runner).

The API enqueues by name with `send_task`, so it never imports the worker (and so never
imports torch). Messages carry only a job id: the job itself is read from PostgreSQL.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from common.settings import get_settings

RUN_JOB = "ssd_img2img.run_job"


@lru_cache
def get_celery() -> Celery:
    settings = get_settings()
    app = Celery("ssd_img2img", broker=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in PostgreSQL, not in a result backend
        # Only RUN_JOB goes to the GPU queue; everything else is CPU work.
        task_routes={RUN_JOB: {"queue": settings.gpu_queue}},
        task_default_queue=settings.cpu_queue,
        # One job at a time per GPU worker: never hold a second job's message while
        # the GPU is busy with the first.
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


def enqueue_job(job_id: str) -> None:
    """Send a job to the GPU queue. Call only after the job's row is committed."""
    get_celery().send_task(RUN_JOB, args=[job_id])
