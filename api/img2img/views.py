"""The bodies that answer a job, shared by the endpoints of api/img2img: its status
(GET status, event streams, cancel), its result (GET result, the stream's last event),
and the caller's job named in a path."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from api.errors import ApiError, error_responses, parse_id
from api.img2img import live_progress
from api.img2img.expiry import expired_response, expiry, output_urls
from api.img2img.schemas import ResultResponse, StatusResponse
from common import jobs, scheduler
from common.models import Account, Job, JobState, JobStatus
from common.settings import Settings
from common.storage import Storage

# The error answers of the endpoints that submit, and of those that read a job.
SUBMIT_ERRORS = error_responses(400, 401, 406, 413, 429)
READ_ERRORS = error_responses(401, 404)


def base_url(request: Request, settings: Settings) -> str:
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def load_job(session: Session, account: Account, request_id: str) -> Job:
    """The caller's job named in a path, or 404."""
    # Scoped to the caller: another tenant's job is indistinguishable from a missing one.
    job = jobs.get_job(session, parse_id(request_id, "request"), account_id=account.id)
    if job is None:
        raise ApiError(404, "request not found")
    return job


def queue_fields(
    session: Session | Connection, job: JobState, position: int | None = None
) -> dict[str, Any]:
    """`queue_position` (read now unless given) and, for a queued job, `eta_seconds`
    from it and the pool's recent pace: neither grows in cost with the queue
    (common/scheduler.py)."""
    if position is None:
        position = scheduler.queue_position(session, job)
    if position is None:
        return {"queue_position": None}
    pace = scheduler.recent_pace(session, job.queue)
    return {
        "queue_position": position,
        "eta_seconds": pace.eta_seconds(position) if pace is not None else None,
    }


def status_body(
    session: Session | Connection,
    job: JobState,
    settings: Settings,
    queue_position: int | None = None,
) -> StatusResponse:
    """The status of `job` (also sent by its event stream and by cancel); its
    `queue_position` is read unless given."""
    expired_at = expiry(job, settings)  # the status still answers after expiry
    return StatusResponse(
        request_id=str(job.id),
        status=job.status.value,
        **queue_fields(session, job, queue_position),
        error=job.error,
        created_at=job.created_at.isoformat(),
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        expired=expired_at is not None,
        expired_at=_iso(expired_at),
        **live_progress.status_fields(job),  # step, progress, ETA: Redis, while it runs
    )


# The request's own fields kept in `jobs.params`, shown back to its owner (the console's
# request page); the worker's internal fields stay out.
PARAMETERS = (
    "prompt",
    "negative_prompt",
    "samples",
    "scheduler",
    "num_inference_steps",
    "guidance_scale",
    "strength",
    "width",
    "height",
)


def result_response(job: Job, request: Request, settings: Settings, store: Storage) -> JSONResponse:
    """The answer of GET /v2/requests/{id} for `job` (also its event stream's last event)."""
    now = jobs.utcnow()
    expired_at = expiry(job, settings, now)
    output = None
    if job.status == JobStatus.COMPLETED:
        if expired_at is not None:  # 410 rather than links to deleted objects
            return expired_response(job, expired_at, settings)
        output = output_urls(job, store, settings, base_url(request, settings), now)
    body = ResultResponse(
        request_id=str(job.id),
        status=job.status.value,
        output=output,
        seed=job.seed,
        parameters={k: job.params[k] for k in PARAMETERS if k in job.params},
        error=job.error,
        metrics=job.metrics or {},
        expired=expired_at is not None,
    )
    return job_json(body.model_dump(), job)


def job_json(body: dict[str, object], job: JobState) -> JSONResponse:
    # Segmind serves a FAILED request with 422 on both URLs; its SDK reads the body.
    return JSONResponse(body, status_code=422 if job.status == JobStatus.FAILED else 200)
