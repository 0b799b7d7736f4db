"""Running claimed work: one job, or a batch of compatible jobs in one pipeline call.

The claim (common/scheduler.py) decides what runs; this generates, uploads and records
each job's result. The database transactions are short and never span the generation
itself: a claim, then (minutes later, maybe) one final write per job.

Each member of a batch keeps its own lease (renewed together), progress, webhooks,
cancellation, completion and metrics. Cancelling one member ends it at once
(CANCELLED, refunded) while the pipeline call goes on for the others; the call stops
only when no member is left. A failure of the whole call fails each member (refunded).
"""

from __future__ import annotations

import functools
import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from common import error_ids, images, jobs, leases, metrics, scheduler, storage
from common.db import session_scope
from common.logs import log_context
from common.models import Job
from common.settings import Settings
from common.storage import Storage
from worker import fault_hooks
from worker import metrics as worker_metrics
from worker.heartbeat import LeaseHeartbeat
from worker.pipeline import GenerationRequest, GenerationResult, generate_batch
from worker.prefetch import InputPrefetcher
from worker.step_monitor import (
    JobCancelled,
    LeaseLost,
    StepMonitor,
    StepWatcher,
    record_cancelled,
)

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
    attempt: int = 1

    @classmethod
    def of(cls, job: Job) -> ClaimedJob:
        return cls(
            id=job.id,
            account_id=job.account_id,
            params=dict(job.params),
            seed=job.seed,
            input_key=job.input_key,
            queue_time=jobs.seconds_between(job.created_at, job.started_at),
            attempt=job.attempts,
        )


@dataclass(frozen=True)
class Claim:
    """The jobs of one claim (head first) and the lease they are held under."""

    owner: str
    jobs: list[ClaimedJob]


def claim(settings: Settings) -> Claim | None:
    """The scheduler's next work for this worker's pool, or None when nothing is queued."""
    owner = leases.new_owner()  # this claim's lease: renewed while it runs
    with session_scope() as session:
        claimed = scheduler.claim_next(
            session,
            settings.gpu_queue,
            owner,
            settings.lease_seconds,
            max_images=settings.max_batch_images,
        )
        if not claimed:
            return None
        return Claim(owner, [ClaimedJob.of(job) for job in claimed])


def to_jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


class _AllStopped(Exception):
    """Every member of the call was cancelled or lost its lease: stop the pipeline."""


@dataclass
class _Member:
    job: ClaimedJob
    monitor: StepMonitor
    request: GenerationRequest | None = None
    # Set once the member is over before the call ends (cancelled, lease lost, failed).
    ended: bool = False


def _request(job: ClaimedJob, store: Storage) -> GenerationRequest:
    p = job.params
    # Stored as received; made upright, RGB and of the output size here (the API only
    # checked it: common/images.py).
    return _request_from(job, images.normalise(store.get(job.input_key), p["width"], p["height"]))


def _request_from(job: ClaimedJob, source: Image.Image) -> GenerationRequest:
    p = job.params
    return GenerationRequest(
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


def _failure(exc: BaseException, what: str, stage: str = "generation") -> str:
    """The error recorded on the failed job (tenants read it): which part failed and an
    error id; the detail (`exc`, its traceback) is logged under that id, never shown."""
    # Storage outages fail the job (refunded) rather than hold the GPU retrying: the
    # client may submit again; the error says which part failed.
    if isinstance(exc, BotoCoreError | ClientError):
        stage = "object storage"
    error_id = error_ids.new()
    metrics.count_if_dependency(exc)
    logger.error(
        "%s: %s failed: %s: %s",
        error_id,
        what,
        type(exc).__name__,
        exc,
        exc_info=exc,
        extra={"error_id": error_id},
    )
    return error_ids.for_tenants(f"{stage} failed", error_id)


class BatchRun:
    """One claim being run: its members, their lease heartbeat and their step reports."""

    def __init__(
        self,
        work: Claim,
        pipe: StableDiffusionXLImg2ImgPipeline,
        store: Storage,
        settings: Settings,
        prefetcher: InputPrefetcher | None = None,
    ) -> None:
        self.owner = work.owner
        self.prefetcher = prefetcher
        self.pipe = pipe
        self.store = store
        self.heartbeat = LeaseHeartbeat(
            [job.id for job in work.jobs],
            work.owner,
            settings.lease_seconds,
            settings.lease_renew_seconds,
            max_seconds=settings.broker_visibility_timeout_seconds,  # the longest job
        )
        self.members = [
            _Member(job, StepMonitor(job.id, lease_lost=self._lease_lost_of(job.id)))
            for job in work.jobs
        ]
        for job in work.jobs:
            # A first claim only: a job taken back and claimed again would count its
            # earlier attempt as waiting.
            if job.queue_time is not None and job.attempt == 1:
                worker_metrics.QUEUE_WAIT.observe(job.queue_time)
        self.started = time.perf_counter()
        self.generated: float | None = None  # when the pipeline call returned
        # Beside the pipeline call: each member's cancel checks and progress reports.
        self.watcher = StepWatcher(lambda: [m.monitor for m in self._live()])

    def _lease_lost_of(self, job_id: uuid.UUID) -> Any:
        return lambda: self.heartbeat.lost(job_id)

    def _metrics(self, member: _Member, **extra: Any) -> dict[str, Any]:
        # The pipeline call's time (until now, for a member that left it early), the
        # same for every member: what the batch cost, shared by `batch_size` jobs.
        end = self.generated if self.generated is not None else time.perf_counter()
        return {
            "queue_time": member.job.queue_time,
            "inference_time": round(end - self.started, 3),
            "batch_size": len(self.members),
            **extra,
        }

    def _end(self, member: _Member) -> None:
        member.ended = True
        self.heartbeat.release(member.job.id)

    def _fail(self, member: _Member, error: str) -> None:
        self._end(member)
        with session_scope() as session:
            failed = jobs.fail(session, member.job.id, error, lease_owner=self.owner)
        if failed:
            worker_metrics.JOBS_FINISHED.labels(outcome="failed").inc()

    def _live(self) -> list[_Member]:
        return [m for m in self.members if not m.ended]

    def on_step(self, done: int, total: int) -> None:
        """Between two denoising steps: each live member's cancel, lease and progress."""
        for member in self._live():
            try:
                member.monitor(done, total)
            except JobCancelled as stop:
                self._end(member)
                metrics = self._metrics(member, steps_done=stop.done, steps_total=stop.total)
                # Recorded by the watcher: the denoising thread does no network I/O.
                self.watcher.later(functools.partial(self._record_cancelled, member, metrics, stop))
            except LeaseLost as stop:
                self._end(member)  # the job's new owner records its result
                logger.warning("%s", stop)
        self.watcher.step_taken()
        if not self._live():
            raise _AllStopped

    def _record_cancelled(
        self, member: _Member, metrics: dict[str, Any], stop: JobCancelled
    ) -> None:
        if record_cancelled(member.job.id, metrics, lease_owner=self.owner):
            worker_metrics.JOBS_FINISHED.labels(outcome="cancelled").inc()
            logger.info("%s", stop)

    def run(self, recorder: Recorder | None = None) -> None:
        """Generate, then upload and record each member's result: here, or on
        `recorder`'s thread, so that the caller can claim and start its next generation
        at once. The lease heartbeat runs until every member is recorded."""
        recording = False
        self.heartbeat.start()
        try:
            with self._log_context():
                results = self._generate()
            if results is not None:
                self.generated = time.perf_counter()
                if recorder is not None:
                    recorder.submit(lambda: self._record_all(results))
                    recording = True
                else:
                    self._record_all(results)
        finally:
            if not recording:
                self.heartbeat.stop()

    def _log_context(self) -> AbstractContextManager[None]:
        """Every line logged about this claim names the worker's lease, and its job
        when it holds one (a batch's lines name theirs)."""
        only = self.members[0].job if len(self.members) == 1 else None
        return log_context(
            worker=self.owner,
            job_id=only.id if only else None,
            account_id=only.account_id if only else None,
        )

    def _generate(self) -> list[tuple[_Member, GenerationResult]] | None:
        """The pipeline call of the live members; None when it did not end normally
        (every member cancelled, lost or failed, each already recorded as such)."""
        for member in self.members:
            fault_hooks.maybe_crash(member.job.params)  # test-only; inert unless set
            try:
                with _timed("load"):
                    member.request = self._input_of(member.job)
            except Exception as exc:
                what = f"job {member.job.id}: reading its input"
                self._fail(member, _failure(exc, what, "reading the input image"))
        live = self._live()
        if not live:
            return None
        logger.info("running %s", ", ".join(str(m.job.id) for m in live))
        requests = [m.request for m in live if m.request is not None]
        self.watcher.start()
        if self.prefetcher is not None:  # the likely next inputs, while the GPU works
            self.prefetcher.start({m.job.input_key for m in self.members})
        try:
            results = generate_batch(self.pipe, requests, self.on_step)
        except _AllStopped:
            return None
        except Exception as exc:
            members = self._live()
            error = _failure(exc, f"the pipeline call of {', '.join(str(m.job.id) for m in live)}")
            for member in members:
                self._fail(member, error)
            return None
        finally:
            self.watcher.stop()  # records what was cancelled, reports the last steps
        _observe_call(live, results)
        return list(zip(live, results, strict=True))

    def _input_of(self, job: ClaimedJob) -> GenerationRequest:
        if self.prefetcher is not None:
            p = job.params
            ready = self.prefetcher.take(job.input_key, p.get("width", 0), p.get("height", 0))
            if ready is not None:
                return _request_from(job, ready)
        return _request(job, self.store)

    def _record_all(self, results: list[tuple[_Member, GenerationResult]]) -> None:
        with self._log_context():  # the recorder's thread has a context of its own
            self._record_each(results)

    def _record_each(self, results: list[tuple[_Member, GenerationResult]]) -> None:
        try:
            for member, result in results:
                if member.ended:
                    continue
                if result.failure is not None:  # NaN pixels: fail (refunded), deliver nothing
                    logger.error("job %s: %s", member.job.id, result.failure)
                    self._fail(member, result.failure)
                    continue
                self._record(member, result.images)
        finally:
            self.heartbeat.stop()

    def _record(self, member: _Member, images: Sequence[Image.Image]) -> None:
        job = member.job
        try:
            keys = []
            with _timed("upload"):
                for index, image in enumerate(images):
                    key = storage.output_key(job.account_id, job.id, index)
                    self.store.put(key, to_jpeg(image), "image/jpeg")
                    keys.append(key)
        except Exception as exc:
            self._fail(member, _failure(exc, f"job {job.id}: uploading its outputs"))
            return
        metrics = self._metrics(member)
        self._end(member)
        with session_scope() as session:
            if not jobs.complete(session, job.id, keys, metrics, lease_owner=self.owner):
                logger.warning("job %s is no longer leased to us; result not recorded", job.id)
                return
        worker_metrics.JOBS_FINISHED.labels(outcome="completed").inc()
        logger.info("job %s completed in %.2fs", job.id, metrics["inference_time"])


@contextmanager
def _timed(phase: str) -> Iterator[None]:
    started = time.perf_counter()
    yield  # nothing observed when the phase raises: a failure is not a duration
    worker_metrics.PHASE_SECONDS.labels(phase=phase).observe(time.perf_counter() - started)


def _observe_call(members: Sequence[_Member], results: list[GenerationResult]) -> None:
    """The pipeline call's phases, speed and size (once per call, not per job)."""
    if not results:
        return
    timings = results[0].timings
    for phase in ("encode", "denoise", "decode"):
        if phase in timings:
            worker_metrics.PHASE_SECONDS.labels(phase=phase).observe(timings[phase])
    if timings.get("denoise"):
        worker_metrics.STEPS_PER_SECOND.observe(results[0].steps_run / timings["denoise"])
    worker_metrics.BATCH_SIZE.observe(sum(m.job.params.get("samples", 1) for m in members))


class Recorder:
    """Uploads and records finished claims on a thread of its own while the runner
    generates the next one: the JPEG encoding, the S3 upload and the completion's
    transaction no longer leave the GPU idle between two jobs. One claim at a time: a
    new one waits for the one before (uploads never pile up behind a fast GPU), and
    each keeps its lease renewed until recorded."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
        self._pending: Future[None] | None = None

    def submit(self, record: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._thread.submit(record)

    def wait(self) -> None:
        """Until the claim being recorded, if any, is recorded."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:
                logger.exception("recording a claim failed")

    def close(self) -> None:
        self.wait()
        self._thread.shutdown()


def execute(
    work: Claim,
    pipe: StableDiffusionXLImg2ImgPipeline,
    store: Storage,
    settings: Settings,
    recorder: Recorder | None = None,
    prefetcher: InputPrefetcher | None = None,
) -> None:
    """Run the claimed jobs and record each one's end (on `recorder`, if given: then
    the end may be recorded after this returns; `recorder.wait()` waits for it); with
    `prefetcher`, read the likely next inputs while the GPU works."""
    BatchRun(work, pipe, store, settings, prefetcher).run(recorder)
