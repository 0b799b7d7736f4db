"""Running one job: claim it in PostgreSQL, generate, upload, record the result.

The database transactions are short and never span the generation itself: a claim,
then (minutes later, maybe) one final write.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from common import jobs, notify, storage
from common.db import session_scope
from common.models import JobStatus
from common.storage import Storage
from worker.pipeline import GenerationRequest, generate

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLImg2ImgPipeline

logger = logging.getLogger(__name__)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class ClaimedJob:
    """What the worker needs of a job, copied out of the claim's transaction."""

    id: uuid.UUID
    account_id: uuid.UUID
    params: dict[str, Any]
    seed: int
    input_key: str
    queue_time: float | None


def claim(job_id: uuid.UUID) -> ClaimedJob | None:
    with session_scope() as session:
        job = jobs.claim(session, job_id)
        if job is None:
            return None
        return ClaimedJob(
            id=job.id,
            account_id=job.account_id,
            params=dict(job.params),
            seed=job.seed,
            input_key=job.input_key,
            queue_time=jobs.seconds_between(job.created_at, job.started_at),
        )


def to_jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def run(job: ClaimedJob, pipe: StableDiffusionXLImg2ImgPipeline, store: Storage) -> list[str]:
    """Generate and upload; returns the output object keys."""
    p = job.params
    source = Image.open(io.BytesIO(store.get(job.input_key))).convert("RGB")
    request = GenerationRequest(
        image=source,
        prompt=p["prompt"],
        negative_prompt=p.get("negative_prompt"),
        samples=p["samples"],
        num_inference_steps=p["num_inference_steps"],
        guidance_scale=p["guidance_scale"],
        strength=p["strength"],
        seed=job.seed,
        scheduler=p["scheduler"],
    )
    result = generate(pipe, request)
    keys = []
    for index, image in enumerate(result.images):
        key = storage.output_key(job.account_id, job.id, index)
        store.put(key, to_jpeg(image), "image/jpeg")
        keys.append(key)
    return keys


def execute(job_id: uuid.UUID, pipe: StableDiffusionXLImg2ImgPipeline, store: Storage) -> None:
    job = claim(job_id)
    if job is None:
        # A repeated or stale message: the job was claimed by someone else or is over.
        logger.info("job %s is not QUEUED; message dropped", job_id)
        return
    logger.info("job %s claimed", job_id)
    started = time.perf_counter()
    try:
        keys = run(job, pipe, store)
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        with session_scope() as session:
            failed = jobs.fail(session, job_id, f"generation failed: {type(exc).__name__}: {exc}")
        if failed:  # after the commit: a woken waiter must find the row terminal
            notify.publish_job_finished(job_id, JobStatus.FAILED)
        return
    metrics = {
        "queue_time": job.queue_time,
        "inference_time": round(time.perf_counter() - started, 3),
    }
    with session_scope() as session:
        if not jobs.complete(session, job_id, keys, metrics):
            logger.warning("job %s was no longer PROCESSING; result not recorded", job_id)
            return
    notify.publish_job_finished(job_id, JobStatus.COMPLETED)  # after the commit, never before
    logger.info("job %s completed in %.2fs", job_id, metrics["inference_time"])
