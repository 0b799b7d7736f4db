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
