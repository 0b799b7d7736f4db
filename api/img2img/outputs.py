"""`GET /v2/requests/{id}/outputs/{index}`: one output JPEG, streamed by the API from
S3 to the caller that owns the request. The alternative to presigned URLs: nothing
but the API key opens it, and it works when clients cannot reach the S3 endpoint.
Results hand out these URLs when OUTPUT_URL_MODE=api; the endpoint answers either way.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response, StreamingResponse

from api.deps import CurrentAccount, SessionDep, SettingsDep, StorageDep
from api.errors import ApiError, error_responses
from api.img2img.expiry import EXPIRED_RESPONSES, expired_response, expiry
from api.img2img.views import load_job
from common.jobs import utcnow
from common.models import JobStatus
from common.storage import ObjectMissing

router = APIRouter(tags=["ssd-img2img"])


@router.get(
    "/v2/requests/{request_id}/outputs/{index}",
    response_class=Response,
    responses={
        200: {
            "description": "The output JPEG.",
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(400, 401, 404, 409),
        **EXPIRED_RESPONSES,
    },
)
def download_output(
    request_id: str,
    index: Annotated[int, Path(ge=0, description="Sample number, from 0.")],
    session: SessionDep,
    settings: SettingsDep,
    store: StorageDep,
    account: CurrentAccount,
) -> Response:
    job = load_job(session, account, request_id)  # another tenant's request: 404
    if job.status != JobStatus.COMPLETED:
        raise ApiError(
            409, f"request {job.id} is {job.status.value}: only a COMPLETED request has outputs"
        )
    expired_at = expiry(job, settings)
    if expired_at is not None:
        return expired_response(job, expired_at, settings)
    if index >= len(job.output_keys):
        raise ApiError(
            404, f"index: request {job.id} has {len(job.output_keys)} outputs, numbered from 0"
        )
    key = job.output_keys[index]
    # A read: the connection goes back to the pool before a download of unknown length.
    session.close()
    try:
        obj = store.open(key)
    except ObjectMissing:
        # Deleted since the row was read: retention got there first.
        return expired_response(job, utcnow(), settings)
    return StreamingResponse(
        obj.chunks,
        media_type="image/jpeg",
        headers={
            "content-length": str(obj.content_length),
            "content-disposition": f'inline; filename="{job.id}-{index}.jpg"',
            "cache-control": "private",
        },
    )
