"""Request and response bodies of Segmind's `ssd-img2img` wire protocol."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES

MAX_SEED = 999_999_999_999_999
SchedulerName = Literal[SCHEDULER_NAMES]  # type: ignore[valid-type]


class Img2ImgRequest(BaseModel):
    # Unknown fields are ignored, as Segmind does: clients send extras like `base64`.
    model_config = ConfigDict(extra="ignore")

    image: str = Field(
        description="Input image: base64 (plain or a data: URI), or an http(s) URL to fetch.",
        min_length=1,
    )
    prompt: str = Field(description="Prompt to render.", min_length=1)
    negative_prompt: str | None = Field(default=None, description="What to keep out of the image.")
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


class SubmitResponse(BaseModel):
    request_id: str
    status: str
    status_url: str
    response_url: str
    poll_url: str


class StatusResponse(BaseModel):
    request_id: str
    status: str
    queue_position: int | None = None
    error: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None


class ResultResponse(BaseModel):
    request_id: str
    status: str
    output: list[str] | None = Field(
        default=None, description="Presigned URLs of the output JPEGs, one per sample."
    )
    seed: int
    error: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
