"""Running one job: claim it in PostgreSQL, generate, upload, record the result.

The database transactions are short and never span the generation itself: a claim,
then (minutes later, maybe) one final write.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from common import jobs, leases, notify, progress, storage
from common.db import session_scope
from common.models import JobStatus
from common.settings import get_settings
from common.storage import Storage
from worker import fault_hooks
from worker.heartbeat import LeaseHeartbeat
from worker.pipeline import GenerationRequest, generate
from worker.step_monitor import JobCancelled, LeaseLost, StepMonitor, record_cancelled

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


def claim(job_id: uuid.UUID, lease_owner: str, lease_seconds: float) -> ClaimedJob | None:
    with session_scope() as session:
        job = jobs.claim(session, job_id, lease_owner=lease_owner, lease_seconds=lease_seconds)
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


def run(
    job: ClaimedJob,
    pipe: StableDiffusionXLImg2ImgPipeline,
    store: Storage,
    on_step: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Generate and upload; returns the output object keys. `on_step(done, total)`
    runs between denoising steps; what it raises aborts the run before any upload."""
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
    result = generate(pipe, request, on_step)
    keys = []
    for index, image in enumerate(result.images):
        key = storage.output_key(job.account_id, job.id, index)
        store.put(key, to_jpeg(image), "image/jpeg")
        keys.append(key)
    return keys


def execute(job_id: uuid.UUID, pipe: StableDiffusionXLImg2ImgPipeline, store: Storage) -> None:
    settings = get_settings()
    # This claim's lease: renewed while the job runs, required to record its result.
    owner = leases.new_owner()
    job = claim(job_id, owner, settings.lease_seconds)
    if job is None:
        # A repeated or stale message: the job was claimed by someone else or is over.
        logger.info("job %s is not QUEUED; message dropped", job_id)
        return
    logger.info("job %s claimed", job_id)
    fault_hooks.maybe_crash(job.params)  # test-only; inert unless its env var is set
    heartbeat = LeaseHeartbeat(
        job_id,
        owner,
        settings.lease_seconds,
        settings.lease_renew_seconds,
        max_seconds=settings.broker_visibility_timeout_seconds,  # the longest job
    )
    progress.clear(job_id)  # an earlier attempt's steps must not show as this one's
    progress.publish_started(job_id)  # after the claim's commit: event streams say PROCESSING
    started = time.perf_counter()
    # Between steps: lease, cancel checks and progress (Redis).
    monitor = StepMonitor(job_id, lease_lost=lambda: heartbeat.lost)
    try:
        with heartbeat:
            keys = run(job, pipe, store, monitor)
    except LeaseLost as stop:
        logger.warning("%s", stop)  # the job's new owner records its result
        return
    except JobCancelled as stop:
        cancelled_metrics = {
            "queue_time": job.queue_time,
            "inference_time": round(time.perf_counter() - started, 3),
            "steps_done": stop.done,
            "steps_total": stop.total,
        }
        if record_cancelled(job_id, cancelled_metrics, lease_owner=owner):
            logger.info("job %s: %s", job_id, stop)
        return
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        # Storage outages fail the job (refunded) rather than hold the GPU retrying:
        # the client may submit again; the error says which part failed.
        stage = "object storage" if isinstance(exc, BotoCoreError | ClientError) else "generation"
        with session_scope() as session:
            failed = jobs.fail(
                session,
                job_id,
                f"{stage} failed: {type(exc).__name__}: {exc}",
                lease_owner=owner,
            )
        if failed:  # after the commit: a woken waiter must find the row terminal
            notify.publish_job_finished(job_id, JobStatus.FAILED)
            progress.clear(job_id)
        return
    metrics = {
        "queue_time": job.queue_time,
        "inference_time": round(time.perf_counter() - started, 3),
    }
    with session_scope() as session:
        if not jobs.complete(session, job_id, keys, metrics, lease_owner=owner):
            logger.warning("job %s is no longer leased to us; result not recorded", job_id)
            return
    notify.publish_job_finished(job_id, JobStatus.COMPLETED)  # after the commit, never before
    progress.clear(job_id)
    logger.info("job %s completed in %.2fs", job_id, metrics["inference_time"])
