"""Celery task registration for the GPU worker."""

from __future__ import annotations

import uuid

from common.settings import get_settings
from common.storage import get_storage
from common.tasks import RUN_JOB, get_celery
from worker import runtime
from worker.execute import execute
from worker.recycle import Recycler

app = get_celery()
recycler = Recycler.from_settings(get_settings())  # WORKER_MAX_JOBS, WORKER_MAX_RSS_MB


@app.task(name=RUN_JOB, ignore_result=True)
def run_job(job_id: str) -> None:
    try:
        execute(uuid.UUID(job_id), runtime.get_pipeline(), get_storage())
    finally:
        recycler.job_done()
