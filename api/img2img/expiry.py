"""How the API serves results under retention (common/retention.py): 410 once the
outputs are gone, output URLs that never outlive the objects they point at."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi.responses import JSONResponse

from api.img2img.schemas import ExpiredResponse
from common import retention
from common.jobs import utcnow
from common.models import Job, JobState
from common.settings import Settings
from common.storage import Storage

EXPIRED_RESPONSES: dict[int | str, dict[str, Any]] = {
    410: {
        "model": ExpiredResponse,
        "description": "COMPLETED, but its outputs were deleted: results are kept "
        "RESULT_RETENTION_SECONDS after they finish.",
    }
}


def expiry(job: JobState, settings: Settings, now: datetime | None = None) -> datetime | None:
    """When the job's objects expired, or None while they are kept."""
    return retention.expiry_time(job, retention.retention_period(settings), now or utcnow())


def expired_response(job: Job, when: datetime, settings: Settings) -> JSONResponse:
    period = retention.retention_period(settings)
    body = ExpiredResponse(
        error=retention.expired_message(job.id, when, period),
        status=job.status.value,
        request_id=str(job.id),
        expired_at=when.isoformat(),
    )
    return JSONResponse(body.model_dump(), status_code=410)


def output_url(base_url: str, job: Job, index: int) -> str:
    """The API's own authenticated download URL of one output."""
    return f"{base_url}/v2/requests/{job.id}/outputs/{index}"


def output_urls(
    job: Job, store: Storage, settings: Settings, base_url: str, now: datetime | None = None
) -> list[str]:
    """The URLs of a COMPLETED, unexpired job's outputs, per OUTPUT_URL_MODE."""
    if settings.output_url_mode == "api":
        return [output_url(base_url, job, index) for index in range(len(job.output_keys))]
    # A presigned URL lives OUTPUT_URL_TTL_SECONDS, but never past the objects' deletion.
    period = retention.retention_period(settings)
    ttl = retention.presigned_url_ttl(job, store.url_ttl, period, now or utcnow())
    return [store.presigned_get_url(key, ttl=ttl or 1) for key in job.output_keys]
