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

from api.deps import CurrentAccount, SessionDep, SettingsDep, set_remaining_credits
from api.errors import error_responses, parse_id
from api.img2img.schemas import StatusResponse
from api.img2img.views import status_body
from common import credits, jobs

router = APIRouter(tags=["ssd-img2img"])


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
    job, ended = jobs.cancel(session, parse_id(request_id, "request"), account.id)
    set_remaining_credits(request, credits.balance_of(session, account.id))
    # The transitions send the job-finished notice or the worker's cancel flag once the
    # request's session commits (common/after_commit.py), before this answer leaves.
    body = status_body(session, job, settings)
    return JSONResponse(body.model_dump(), status_code=200 if ended else 202)
