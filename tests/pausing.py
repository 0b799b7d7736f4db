"""Pausing the GPU workers' consumption while a test holds jobs QUEUED.

Celery's `cancel_consumer` / `add_consumer`, addressed to the GPU workers by name
(`gpu-<pid>@<host>`, worker/__main__.py): broadcast, `add_consumer` would also make
the CPU worker consume the GPU queue, and it drops every job message it gets as an
unregistered task.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery

from common.settings import get_settings
from common.tasks import get_celery
from tests.test_limits import wait_until


def gpu_workers(app: Celery) -> list[str]:
    """The names of the GPU workers that answer now (a solo-pool worker answers control
    messages only between jobs)."""
    replies = app.control.ping(timeout=1) or []
    return [name for reply in replies for name in reply if name.startswith("gpu-")]


def _consuming(app: Celery, queue: str, workers: list[str]) -> bool | None:
    """Whether any of `workers` consumes `queue`; None while none answers."""
    replies = app.control.inspect(timeout=1, destination=workers).active_queues() or {}
    if not replies:
        return None
    return any(q["name"] == queue for queues in replies.values() for q in queues)


@contextmanager
def gpu_workers_paused() -> Iterator[None]:
    """Within the block, the GPU workers take no job from their queue."""
    app, queue = get_celery(), get_settings().gpu_queue
    workers: list[str] = []

    def answering() -> bool:
        workers[:] = gpu_workers(app)
        return bool(workers)

    def paused() -> bool:
        app.control.cancel_consumer(queue, destination=workers)  # idempotent
        return _consuming(app, queue, workers) is False

    def resumed() -> bool:
        # A resumed worker may start a long job at once and then answer nothing until it
        # is done: its reply to add_consumer is the proof.
        replies = app.control.add_consumer(queue, destination=workers, reply=True) or []
        return set(workers) <= {name for reply in replies for name in reply}

    wait_until(answering, "a GPU worker answering")
    wait_until(paused, "paused")
    try:
        yield
    finally:
        wait_until(resumed, "consuming again")
