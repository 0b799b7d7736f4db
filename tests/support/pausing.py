"""Pausing the GPU workers' claims while a test holds jobs QUEUED.

The workers' own remote-control commands `pause_claims` / `resume_claims`
(worker/tasks.py), addressed to the GPU workers by name (`gpu-<pid>@<host>`,
worker/__main__.py): once a worker answered `pause_claims`, it starts no claim until
`resume_claims`; the claim it was running, if any, goes on to its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery

from common.tasks import get_celery
from tests.support.waiting import wait_until


def gpu_workers(app: Celery) -> list[str]:
    """The names of the GPU workers that answer now."""
    replies = app.control.ping(timeout=1) or []
    return [name for reply in replies for name in reply if name.startswith("gpu-")]


def _all_answered(app: Celery, command: str, workers: list[str]) -> bool:
    replies = app.control.broadcast(command, destination=workers, reply=True, timeout=2) or []
    return set(workers) <= {name for reply in replies for name in reply}


@contextmanager
def gpu_workers_paused() -> Iterator[None]:
    """Within the block, the GPU workers claim no job."""
    app = get_celery()
    workers: list[str] = []

    def answering() -> bool:
        workers[:] = gpu_workers(app)
        return bool(workers)

    wait_until(answering, "a GPU worker answering")
    wait_until(lambda: _all_answered(app, "pause_claims", workers), "paused")
    try:
        yield
    finally:
        wait_until(lambda: _all_answered(app, "resume_claims", workers), "claiming again")
