"""Segmind's `ssd-img2img` endpoints: v2 (queue) submit, status and result."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Connection
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import idempotency
from api.deps import (
    ApiKeyHeader,
    CurrentAccount,
    SessionDep,
    SettingsDep,
    StorageDep,
    enforce_rate_limit,
    set_remaining_credits,
)
from api.errors import ApiError, error_responses, parse_id
from api.img2img import live_progress, status_read
from api.img2img.expiry import EXPIRED_RESPONSES, expired_response, expiry, output_urls
from api.img2img.schemas import Img2ImgRequest, ResultResponse, StatusResponse, SubmitResponse
from common import jobs, scheduler
from common.db import autocommit_connection
from common.models import Job, JobState, JobStatus
from common.settings import Settings
from common.storage import Storage

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ssd-img2img"])

SUBMIT_ERRORS = error_responses(400, 401, 406, 413, 429)
READ_ERRORS = error_responses(401, 404)


def _base_url(request: Request, settings: Settings) -> str:
    return (settings.public_base_url or str(request.base_url)).rstrip("/")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _load(session: SessionDep, account: CurrentAccount, request_id: str) -> Job:
    # Scoped to the caller: another tenant's job is indistinguishable from a missing one.
    job = jobs.get_job(session, parse_id(request_id, "request"), account_id=account.id)
    if job is None:
        raise ApiError(404, "request not found")
    return job


@router.post(
    "/v2/ssd-img2img",
    response_model=SubmitResponse,
    responses={**SUBMIT_ERRORS, **idempotency.RESPONSES},
)
def submit_v2(
    body: Img2ImgRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    store: StorageDep,
    account: CurrentAccount,
    idempotency_key: idempotency.IdempotencyKeyHeader = None,
) -> SubmitResponse:
    key = idempotency.parse(idempotency_key, body)
    submitted = idempotency.submit_and_commit(session, store, settings, account, body, key)
    job, balance = submitted.job, submitted.balance
    if submitted.replayed:  # the key's original request: not charged again
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    set_remaining_credits(request, balance)
    base = _base_url(request, settings)
    status_url = f"{base}/v2/requests/{job.id}/status"
    return SubmitResponse(
        request_id=str(job.id),
        status=job.status.value,
        status_url=status_url,
        response_url=f"{base}/v2/requests/{job.id}",
        poll_url=status_url,
    )


@router.get(
    "/v2/requests/{request_id}/status",
    response_model=StatusResponse,
    responses={**READ_ERRORS, 422: {"model": StatusResponse, "description": "FAILED."}},
)
async def get_status(
    request_id: str, request: Request, settings: SettingsDep, x_api_key: ApiKeyHeader = None
) -> JSONResponse:
    # The most frequent request of all (clients poll every second or so): everything in
    # ONE threadpool call and one session, where dependencies would take a call each.
    return await run_in_threadpool(_status, request_id, request, settings, x_api_key)


def _status(
    request_id: str, request: Request, settings: Settings, raw_key: str | None
) -> JSONResponse:
    try:
        job_id = uuid.UUID(request_id)
    except ValueError:
        job_id = None  # names nothing: 404, once the key is checked and counted
    # One pooled connection, in autocommit (reads only: no BEGIN/ROLLBACK round trips),
    # given back before the rate limiter's Redis round trip.
    with autocommit_connection() as conn:
        found = status_read.read(conn, raw_key, job_id)  # scoped to the caller
        job = found.job
        body = status_body(conn, job, settings, found.queue_position) if job else None
    enforce_rate_limit(request, found.key, settings)
    if job is None or body is None:
        raise ApiError(404, "request not found")
    return _json(body.model_dump(), job)


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


@router.get(
    "/v2/requests/{request_id}",
    response_model=ResultResponse,
    responses={
        **READ_ERRORS,
        **EXPIRED_RESPONSES,
        422: {"model": ResultResponse, "description": "FAILED."},
    },
)
def get_result(
    request_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StorageDep,
    account: CurrentAccount,
) -> JSONResponse:
    job = _load(session, account, request_id)
    return result_response(job, request, settings, store)


def result_response(job: Job, request: Request, settings: Settings, store: Storage) -> JSONResponse:
    """The answer of GET /v2/requests/{id} for `job` (also its event stream's last event)."""
    now = jobs.utcnow()
    expired_at = expiry(job, settings, now)
    output = None
    if job.status == JobStatus.COMPLETED:
        if expired_at is not None:  # 410 rather than links to deleted objects
            return expired_response(job, expired_at, settings)
        output = output_urls(job, store, settings, _base_url(request, settings), now)
    body = ResultResponse(
        request_id=str(job.id),
        status=job.status.value,
        output=output,
        seed=job.seed,
        error=job.error,
        metrics=job.metrics or {},
        expired=expired_at is not None,
    )
    return _json(body.model_dump(), job)


def _json(body: dict[str, object], job: JobState) -> JSONResponse:
    # Segmind serves a FAILED request with 422 on both URLs; its SDK reads the body.
    return JSONResponse(body, status_code=422 if job.status == JobStatus.FAILED else 200)
