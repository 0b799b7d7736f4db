"""The live-progress fields of a status body: read from Redis (common/progress.py),
where the worker keeps them, never from PostgreSQL, and only while the job runs."""

from __future__ import annotations

import time
from typing import Any

from common import progress
from common.models import JobState, JobStatus


def status_fields(job: JobState) -> dict[str, Any]:
    """`progress`, `step`, `total_steps`, `eta_seconds` and `cancel_requested` of `job`.

    One Redis read while the job is PROCESSING, none otherwise. Without a report (none
    yet, or Redis unreachable) a running job shows progress 0 and no step.
    """
    fields: dict[str, Any] = {"cancel_requested": job.cancel_requested_at is not None}
    if job.status == JobStatus.QUEUED:
        fields["progress"] = 0.0
    elif job.status == JobStatus.COMPLETED:
        fields["progress"] = 1.0
    elif job.status == JobStatus.PROCESSING:
        fields.update(from_report(progress.read(job.id)))
    return fields


def from_report(report: progress.Progress | None) -> dict[str, Any]:
    """The fields of one progress report (of a PROCESSING job)."""
    if report is None:
        return {"progress": 0.0, "step": None, "total_steps": None, "eta_seconds": None}
    return {
        "progress": round(report.fraction, 4),
        "step": report.step,
        "total_steps": report.total,
        "eta_seconds": report.eta_at(time.time()),
    }
