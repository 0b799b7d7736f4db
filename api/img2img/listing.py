"""`GET /v2/requests`: the caller's own requests, newest first, cursor-paginated."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import CurrentAccount, SessionDep, SettingsDep
from api.errors import error_responses
from api.img2img.expiry import expiry
from common import cursors, jobs
from common.models import JobStatus

router = APIRouter(tags=["ssd-img2img"])


class RequestSummary(BaseModel):
    request_id: str
    status: JobStatus
    samples: int
    num_inference_steps: int
    cost: int
    created_at: datetime
    finished_at: datetime | None
    expired: bool = Field(
        default=False, description="Retention deleted its outputs: its response_url is 410."
    )


class RequestPage(BaseModel):
    requests: list[RequestSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next (older) page; null on the last page."
    )


@router.get(
    "/v2/requests",
    response_model=RequestPage,
    responses=error_responses(400, 401),
)
def list_requests(
    session: SessionDep,
    settings: SettingsDep,
    account: CurrentAccount,
    status: Annotated[JobStatus | None, Query(description="Only requests in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> RequestPage:
    before = cursors.decode(cursor) if cursor else None
    # One extra row tells whether another page follows without a COUNT query.
    rows = jobs.list_jobs(session, account.id, limit=limit + 1, status=status, before=before)
    page = rows[:limit]
    now = jobs.utcnow()
    return RequestPage(
        requests=[
            RequestSummary(
                request_id=str(job.id),
                status=job.status,
                samples=int(job.params["samples"]),
                num_inference_steps=int(job.params["num_inference_steps"]),
                cost=job.cost,
                created_at=job.created_at,
                finished_at=job.finished_at,
                expired=expiry(job, settings, now) is not None,
            )
            for job in page
        ],
        next_cursor=cursors.encode(page[-1].created_at, page[-1].id) if len(rows) > limit else None,
    )
