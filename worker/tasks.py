"""Celery task and remote-control commands of the GPU worker.

Messages only wake the runner (worker/runner.py), which claims from PostgreSQL: the
task returns at once, so the worker keeps answering control messages mid-job.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import control_command

from common.tasks import WAKE_GPU, get_celery
from worker import runtime

app = get_celery()


@app.task(name=WAKE_GPU, ignore_result=True)
def wake(*hint: Any) -> None:
    """A wake-up. Messages of the release before named a job (`hint`): the job is in
    PostgreSQL and is claimed in the fair order like any other."""
    runtime.get_runner().wake()


@control_command()
def pause_claims(state: Any) -> dict[str, str]:
    """`celery control pause_claims -d gpu-…`: finish the running claim, take no new one
    (draining a worker before maintenance; tests holding jobs QUEUED)."""
    runtime.get_runner().pause()
    return {"ok": "paused"}


@control_command()
def resume_claims(state: Any) -> dict[str, str]:
    runtime.get_runner().resume()
    return {"ok": "resumed"}
