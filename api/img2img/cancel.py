"""`POST /v2/requests/{id}/cancel`.

- QUEUED: CANCELLED at once and refunded, in one transaction; it will never run (the
  worker claims only QUEUED jobs, so its message is dropped). **200** with the status.
- PROCESSING: the request is recorded (`cancel_requested_at`) and flagged in Redis; the
  worker stops between two denoising steps (no VAE decode, no upload), then makes it
  CANCELLED and refunds it. **202** with the status (still PROCESSING,
  `cancel_requested: true`); follow it with the status URL or the event stream. A job
  whose denoising already ended completes anyway, and stays charged.
- Already COMPLETED, FAILED or CANCELLED: **409**. Unknown or another tenant's: 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api.deps import CurrentAccount, SessionDep, SettingsDep, set_remaining_credits
from api.errors import ApiError, error_responses, parse_id
from api.img2img.endpoints import status_body
from api.img2img.schemas import StatusResponse
from common import jobs
from common.models import Account

router = APIRouter(tags=["ssd-img2img"])


# Rounds of "cancel if QUEUED, else flag if PROCESSING"; a job changes state at most a
# few times a second, so a third round finding neither is all but impossible.
_TRIES = 3


@router.post(
    "/v2/requests/{request_id}/cancel",
    response_model=StatusResponse,
    responses={
        200: {"description": "It was QUEUED: now CANCELLED and refunded."},
        202: {
            "model": StatusResponse,
            "description": "It is PROCESSING: cancellation requested; the worker stops it "
            "within a denoising step, then it becomes CANCELLED and is refunded.",
        },
        **error_responses(401, 404, 409),
    },
)
def cancel_request(
    request_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    account: CurrentAccount,
) -> JSONResponse:
    job_id = parse_id(request_id, "request")

    # A job can move between the two updates: put back in the queue by the reconciler
    # (its worker's lease expired) after the first missed it. Try again while it is
    # not over.
    for _ in range(_TRIES):
        job = jobs.cancel_queued(session, job_id, account.id)
        if job is not None:  # refunded, job.completed webhooks recorded: one transaction
            status_code = 200
            break
        job = jobs.request_cancel(session, job_id, account.id)
        if job is not None:
            status_code = 202
            break
        current = jobs.get_job(session, job_id, account_id=account.id)
        if current is None:
            raise ApiError(404, "request not found")
        if current.status.is_terminal:
            raise ApiError(
                409,
                f"request {job_id} is {current.status.value}: only QUEUED and PROCESSING "
                "requests can be cancelled",
            )
        session.expire(current)  # the next round must read it afresh
    else:
        raise ApiError(409, f"request {job_id} is changing state; try again")
    balance = session.execute(select(Account.balance).where(Account.id == account.id)).scalar_one()
    # The transitions send the job-finished notice or the worker's cancel flag once
    # this commits (common/after_commit.py): whoever they wake finds the row as it is.
    session.commit()
    set_remaining_credits(request, balance)
    body = status_body(session, job, settings)
    session.commit()  # status_body may have read: end that transaction too
    return JSONResponse(body.model_dump(), status_code=status_code)
