"""Celery task registration for the GPU worker."""

from __future__ import annotations

import uuid

from common.storage import get_storage
from common.tasks import RUN_JOB, get_celery
from worker import runtime
from worker.execute import execute

app = get_celery()


@app.task(name=RUN_JOB, ignore_result=True)
def run_job(job_id: str) -> None:
    execute(uuid.UUID(job_id), runtime.get_pipeline(), get_storage())
