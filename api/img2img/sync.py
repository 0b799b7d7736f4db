"""Segmind's synchronous v1 `ssd-img2img`: one call that blocks until the image exists.

It is an ordinary job underneath (same validation, debit, queue and worker as v2),
visible through v2 under the id in `x-request-id`. The request waits on an asyncio
event of the process's `JobWaiters` (woken by a Redis notification or the periodic
one-query re-check), never by polling the database itself, and holds no database
connection and no thread while it waits, so one API process serves hundreds of
waiting clients.

Outcomes: 200 with the JPEG (`base64: false`) or JSON (`base64: true`); 422 when the job
FAILED (as v2 serves FAILED; its credits were refunded); 409 when it was CANCELLED; 504
when it is still running after `SYNC_WAIT_TIMEOUT_SECONDS` (the job goes on and stays
charged: poll the status URL named in the error).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import idempotency
from api.deps import (
    CurrentAccount,
    SessionDep,
    SettingsDep,
    StorageDep,
    caller_key_id,
    set_remaining_credits,
)
from api.errors import ApiError, ErrorBody, error_responses
from api.img2img import service
from api.img2img.expiry import EXPIRED_RESPONSES, expired_response, expiry
from api.img2img.schemas import Img2ImgRequest
from api.img2img.views import SUBMIT_ERRORS
from api.job_waiters import JobWaiters, Waiter, job_waiters
from api.metrics import SYNC_WAITS
from api.open_work import Work, open_work
from common import credits, jobs
from common.db import session_scope
from common.limits import effective_limits
from common.models import Account, Job, JobStatus
from common.settings import Settings
from common.storage import Storage

logger = logging.getLogger(__name__)
router = APIRouter(tags=["ssd-img2img"])


class SyncResult(BaseModel):
    """The v1 body when `base64` is true (the default)."""

    image: str = Field(description="The first sample, a base64 JPEG.")
    images: list[str] = Field(description="Every sample, base64 JPEGs, in seed order.")
    seed: int = Field(description="Seed of the first sample; sample i used seed + i.")
    request_id: str
    status: str
    metrics: dict[str, Any] = Field(default_factory=dict)


class SyncFailure(BaseModel):
    """The v1 body when the job FAILED (HTTP 422, as v2 serves FAILED)."""

    error: str = Field(description="request <id> failed: <why>")
    request_id: str
    status: str


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`base64: false`: the first sample's JPEG bytes. "
        "`base64: true`: JSON with every sample.",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": SyncResult.model_json_schema()},
        },
    },
    # Refusals before any job exists: exactly v2's.
    **SUBMIT_ERRORS,
    **error_responses(409),
    **EXPIRED_RESPONSES,  # only an Idempotency-Key replay can find its outputs deleted
    422: {"model": SyncFailure, "description": "The job FAILED; its credits were refunded."},
    504: {
        "model": ErrorBody,
        "description": "Still running after SYNC_WAIT_TIMEOUT_SECONDS; the job goes on: "
        "poll the status URL named in `error` (also in `x-status-url`).",
    },
}


def _read_job(job_id: uuid.UUID, account_id: uuid.UUID) -> tuple[Job | None, int | None]:
    """The job and the account's current balance (a FAILED job was refunded), read
    in a fresh session: the request's own would return its stale cached copy."""
    with session_scope() as session:
        job = jobs.get_job(session, job_id, account_id=account_id)
        return job, credits.balance_of(session, account_id)


async def _wait(
    woken: Waiter, job_id: uuid.UUID, account_id: uuid.UUID, wait_seconds: float
) -> tuple[Job | None, int | None]:
    """Until the job is terminal or `wait_seconds` pass; one database read per wake-up,
    and one at the deadline (a notification may have been lost just before it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    with SYNC_WAITS.track_inprogress():
        while True:
            timed_out = False
            try:
                await asyncio.wait_for(woken.wait(), max(deadline - loop.time(), 0))
            except TimeoutError:
                timed_out = True
            woken.clear()
            if woken.refusal is not None:  # the key was revoked, or the account suspended
                raise woken.refusal
            job, balance = await run_in_threadpool(_read_job, job_id, account_id)
            if timed_out or job is None or job.status.is_terminal:
                return job, balance


def _base64_outputs(store: Storage, keys: list[str]) -> list[str]:
    return [base64.b64encode(store.get(key)).decode() for key in keys]


async def _completed(
    job: Job, body: Img2ImgRequest, store: Storage, headers: dict[str, str]
) -> Response:
    if not body.base64:
        jpeg = await run_in_threadpool(store.get, job.output_keys[0])
        return Response(jpeg, media_type="image/jpeg", headers=headers)
    images = await run_in_threadpool(_base64_outputs, store, job.output_keys)
    result = SyncResult(
        image=images[0],
        images=images,
        seed=job.seed,
        request_id=str(job.id),
        status=job.status.value,
        metrics=job.metrics or {},
    )
    return JSONResponse(result.model_dump(), headers=headers)


@router.post("/v1/ssd-img2img", response_model=None, responses=RESPONSES)
async def run_v1(
    body: Img2ImgRequest,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StorageDep,
    account: CurrentAccount,
    idempotency_key: idempotency.IdempotencyKeyHeader = None,
) -> Response:
    """Generate and wait: the answer is the image itself (Segmind's v1 protocol)."""
    key = idempotency.parse(idempotency_key, body)
    # The wait is counted from before the submit: a refused one costs nothing.
    with open_work.take(Work.STREAM, account.id, effective_limits(account, settings).max_streams):
        return await _submit_and_wait(body, request, session, settings, store, account, key)


async def _submit_and_wait(
    body: Img2ImgRequest,
    request: Request,
    session: Session,
    settings: Settings,
    store: Storage,
    account: Account,
    key: idempotency.IdempotencyKey | None,
) -> Response:
    submitted = await run_in_threadpool(
        service.submit_and_commit, session, store, settings, account, body, key
    )
    job, balance = submitted.job, submitted.balance
    set_remaining_credits(request, balance)
    base = (settings.public_base_url or str(request.base_url)).rstrip("/")
    status_url = f"{base}/v2/requests/{job.id}/status"
    headers = {
        "x-request-id": str(job.id),
        "x-status-url": status_url,
        "x-response-url": f"{base}/v2/requests/{job.id}",
    }
    if submitted.replayed:
        headers[idempotency.REPLAYED_HEADER] = "true"

    waiters: JobWaiters = job_waiters(request.app)
    with waiters.register(job.id, caller_key_id(request)) as woken:
        # A worker may have run the job (it was committed before this waiter existed),
        # or it is an Idempotency-Key replay of a job over long ago: read it once now,
        # then at each notice.
        woken.set()
        final, latest_balance = await _wait(
            woken, job.id, account.id, settings.sync_wait_timeout_seconds
        )
    if latest_balance is not None:
        set_remaining_credits(request, latest_balance)

    if final is None:  # deleted while we waited (retention, account removal)
        raise ApiError(404, f"request {job.id} no longer exists", headers)
    if final.status == JobStatus.COMPLETED:
        expired_at = expiry(final, settings)
        if expired_at is not None:  # an Idempotency-Key replay after retention
            gone = expired_response(final, expired_at, settings)
            gone.headers.update(headers)
            return gone
        return await _completed(final, body, store, headers)
    if final.status == JobStatus.FAILED:
        failure = SyncFailure(
            error=f"request {job.id} failed: {final.error or 'unknown error'}",
            request_id=str(job.id),
            status=final.status.value,
        )
        return JSONResponse(failure.model_dump(), status_code=422, headers=headers)
    if final.status == JobStatus.CANCELLED:
        raise ApiError(409, f"request {job.id} was cancelled", headers)
    waited = settings.sync_wait_timeout_seconds
    raise ApiError(
        504,
        f"request {job.id} still {final.status.value} after {waited:g}s; it goes on: "
        f"poll {status_url}",
        headers,
    )
