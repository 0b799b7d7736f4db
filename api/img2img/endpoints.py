"""Segmind's `ssd-img2img` endpoints: v2 (queue) submit, status and result."""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api import idempotency
from api.deps import (
    INVALID_KEY,
    MISSING_KEY,
    ApiKeyHeader,
    CallerKey,
    CurrentAccount,
    SessionDep,
    SettingsDep,
    StorageDep,
    enforce_rate_limit,
    refuse_unusable,
    set_remaining_credits,
)
from api.errors import ApiError
from api.img2img import service
from api.img2img.expiry import EXPIRED_RESPONSES
from api.img2img.schemas import Img2ImgRequest, ResultResponse, StatusResponse, SubmitResponse
from api.img2img.views import (
    READ_ERRORS,
    SUBMIT_ERRORS,
    base_url,
    job_json,
    load_job,
    result_response,
    status_body,
)
from common import status_read
from common.db import autocommit_connection
from common.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ssd-img2img"])


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
    submitted = service.submit_and_commit(session, store, settings, account, body, key)
    job, balance = submitted.job, submitted.balance
    if submitted.replayed:  # the key's original request: not charged again
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    set_remaining_credits(request, balance)
    base = base_url(request, settings)
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
    if not raw_key:
        raise ApiError(401, MISSING_KEY)
    # One pooled connection, in autocommit (reads only: no BEGIN/ROLLBACK round trips),
    # given back before the rate limiter's Redis round trip.
    with autocommit_connection() as conn:
        found = status_read.read(conn, raw_key, job_id)  # scoped to the key's account
        if found is None:
            raise ApiError(401, INVALID_KEY)
        refuse_unusable(found.key.revoked_at, found.key.account_status)
        job = found.job
        body = status_body(conn, job, settings, found.queue_position) if job else None
    key = found.key
    enforce_rate_limit(
        request, CallerKey(key.key_id, key.balance, key.rate_limit_per_minute), settings
    )
    if job is None or body is None:
        raise ApiError(404, "request not found")
    return job_json(body.model_dump(), job)


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
    job = load_job(session, account, request_id)
    return result_response(job, request, settings, store)
