"""The Celery app of the CPU background worker, and how its tasks are found."""

from __future__ import annotations

import importlib
from typing import Any

from celery import Celery

from common.tasks import get_celery

# Modules defining CPU tasks; each may define `BEAT_SCHEDULE: dict[str, dict]` entries
# (Celery beat format) for periodic tasks. Add new modules here.
TASK_MODULES: tuple[str, ...] = (
    "background.retention_tasks",
    "background.reconcile_tasks",
    "background.webhook_tasks",
)


def load_tasks() -> Celery:
    """The shared Celery app with every CPU task module imported and its beat schedule set."""
    app = get_celery()
    schedule: dict[str, dict[str, Any]] = {}
    for name in TASK_MODULES:
        module = importlib.import_module(name)
        schedule.update(getattr(module, "BEAT_SCHEDULE", {}))
    app.conf.beat_schedule = schedule
    return app
