"""Request and response bodies of Segmind's `ssd-img2img` wire protocol."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.text import Text
from common.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES

MAX_SEED = 999_999_999_999_999
SchedulerName = Literal[SCHEDULER_NAMES]  # type: ignore[valid-type]


class Img2ImgRequest(BaseModel):
    # Unknown fields are ignored, as Segmind does: clients send extras like `base64`.
    model_config = ConfigDict(extra="ignore")

    image: Text = Field(
        description="Input image: base64 (plain or a data: URI), or an http(s) URL to fetch.",
        min_length=1,
    )
    prompt: Text = Field(description="Prompt to render.", min_length=1)
    negative_prompt: Text | None = Field(default=None, description="What to keep out of the image.")
    samples: int = Field(
        default=1, ge=1, le=4, strict=True, description="Images to generate; affects the price."
    )
    scheduler: SchedulerName = Field(default=DEFAULT_SCHEDULER, description="Sampler.")
    num_inference_steps: int = Field(
        default=25,
        ge=20,
        le=100,
        strict=True,
        description="Denoising steps; affects the price (cost = samples × steps). "
        "img2img runs int(steps × strength) of them.",
    )
    guidance_scale: float = Field(
        default=7.5, ge=1, le=25, description="Classifier-free guidance scale."
    )
    seed: int = Field(
        default=-1,
        ge=-1,
        le=MAX_SEED,
        strict=True,
        description="-1 = the server picks one (returned). Sample i uses seed + i.",
    )
    strength: float = Field(
        default=0.75, ge=0, le=0.99, description="How far to move away from the input."
    )
    base64: bool = Field(
        default=True, description="v1 only: JSON with base64 instead of JPEG bytes."
    )
    # Not Segmind's: signed webhooks of this job (docs/webhooks.md, common/webhooks).
    webhook_url: Text | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="http(s) URL that receives this job's events as signed webhooks "
        "(Standard Webhooks); it must resolve to public addresses.",
    )
    webhook_events_filter: list[Literal["started", "progress", "completed"]] | None = Field(
        default=None,
        min_length=1,
        description="Events sent to webhook_url; default started and completed. "
        "`completed` covers every terminal state (COMPLETED, FAILED, CANCELLED).",
    )


class SubmitResponse(BaseModel):
    request_id: str
    status: str
    status_url: str
    response_url: str
    poll_url: str


class StatusResponse(BaseModel):
    request_id: str
    status: str
    queue_position: int | None = Field(
        default=None,
        description="QUEUED: how many jobs will start before this one (0 = next), all "
        "tenants together, in the fair order as it stands now (docs/scheduling.md); "
        "null otherwise.",
    )
    error: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    expired: bool = Field(
        default=False, description="True once retention deleted the outputs (and input)."
    )
    expired_at: str | None = None
    progress: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="0 while QUEUED, step / total_steps while PROCESSING (0 until the first "
        "step), 1 when COMPLETED; null for FAILED and CANCELLED.",
    )
    step: int | None = Field(
        default=None, description="PROCESSING: denoising iterations done (null before the first)."
    )
    total_steps: int | None = Field(
        default=None,
        description="PROCESSING: the pipeline's own iteration count, about int(steps × "
        "strength), twice that for second-order schedulers (Heun, DPM2).",
    )
    eta_seconds: float | None = Field(
        default=None,
        description="PROCESSING: estimated seconds until denoising ends. QUEUED: estimated "
        "seconds until the job is done, from `queue_position` and the recent pace of the "
        "GPU workers (null before any job finished recently).",
    )
    cancel_requested: bool = Field(
        default=False, description="Cancelling was asked for (POST .../cancel)."
    )


class ResultResponse(BaseModel):
    request_id: str
    status: str
    output: list[str] | None = Field(
        default=None,
        description="URLs of the output JPEGs, one per sample: presigned S3 URLs, or the "
        "API's authenticated /outputs/{index} URLs (OUTPUT_URL_MODE).",
    )
    seed: int
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Not Segmind's: what the request asked for (prompt, negative_prompt, "
        "samples, scheduler, num_inference_steps, guidance_scale, strength) and the output's "
        "width and height.",
    )
    error: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    expired: bool = Field(
        default=False, description="FAILED/CANCELLED only: COMPLETED ones answer 410 then."
    )


class ExpiredResponse(BaseModel):
    """HTTP 410: the request COMPLETED, but retention has deleted its outputs."""

    error: str = Field(
        description="the outputs of request <id> expired at <time> (results are kept <period>)"
    )
    status: str
    request_id: str
    expired_at: str
