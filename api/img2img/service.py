"""Submitting img2img jobs. Never commits: the endpoint does; the GPU workers are woken
after that commit (common.tasks.wake_after_commit)."""

from __future__ import annotations

import secrets
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.idempotency import IdempotencyKey, Replay, check_unused, find_original
from api.image_source import is_url, load_image_bytes
from api.img2img.schemas import MAX_SEED, Img2ImgRequest
from api.metrics import CREDITS_CHARGED
from api.open_work import Work, open_work
from common import credits, jobs, limits, storage, tasks
from common.after_commit import after_commit
from common.db import autocommit_session
from common.images import check
from common.models import Account, Job, JobStatus
from common.scheduler import job_work
from common.settings import Settings
from common.storage import Storage
from common.urlsafety import UrlError
from common.webhooks.events import check_target_url


def _check_request(req: Img2ImgRequest, settings: Settings) -> None:
    if len(req.prompt) > settings.max_prompt_chars:
        raise ApiError(400, f"prompt: longer than {settings.max_prompt_chars} characters")
    if req.negative_prompt and len(req.negative_prompt) > settings.max_prompt_chars:
        raise ApiError(400, f"negative_prompt: longer than {settings.max_prompt_chars} characters")
    if int(req.num_inference_steps * req.strength) == 0:
        raise ApiError(
            400,
            "strength: too low for num_inference_steps; "
            "int(num_inference_steps * strength) must be at least 1",
        )
    _check_webhook(req, settings)


def _check_webhook(req: Img2ImgRequest, settings: Settings) -> None:
    if req.webhook_events_filter is not None and req.webhook_url is None:
        raise ApiError(400, "webhook_events_filter: needs webhook_url")
    if req.webhook_url is not None:
        try:
            check_target_url(req.webhook_url, settings)
        except UrlError as exc:
            raise ApiError(400, f"webhook_url: {exc}") from exc


def _fetch_slot(image: str, account: Account, settings: Settings) -> AbstractContextManager[object]:
    """A slot of the account's (and the process's) bounded image URL fetches, held
    while the URL is fetched (api/open_work.py); nothing for base64."""
    if not is_url(image):
        return nullcontext()
    bound = limits.effective_limits(account, settings).max_url_fetches
    return open_work.take(Work.URL_FETCH, account.id, bound, settings.max_url_fetches_per_process)


def submit(
    session: Session,
    store: Storage,
    settings: Settings,
    account: Account,
    req: Img2ImgRequest,
    idempotency: IdempotencyKey | None = None,
) -> tuple[Job, int]:
    """Validate, store the input, insert the job and debit its cost. Returns (job, balance).

    Everything that can refuse the request runs before the debit, so a refused request
    costs nothing. The input object is written before the commit: if the commit fails,
    an unreferenced object is left for retention to delete, never a job without input.
    With an idempotency key already used, raises idempotency.Replay (same body) or a
    422 (another body) first, before any other check: a replay is never refused.
    """
    # Early checks on a connection of their own, given back before any I/O (an image
    # URL's fetch, the S3 upload): `session` opens its transaction only after them.
    with autocommit_session() as read:
        check_unused(read, account.id, idempotency)
        _check_request(req, settings)
        limits.check_jobs_in_flight(read, account, settings, lock=False)
    cost = credits.job_cost(req.samples, req.num_inference_steps)
    if account.balance < cost:  # cheap early refusal (before fetching an image URL);
        # the conditional debit below is the real check
        raise credits.InsufficientCredits(cost, account.balance)
    with _fetch_slot(req.image, account, settings):
        raw = load_image_bytes(req.image, settings)  # base64, data: URI or http(s) URL
    # Checks only: the worker normalises it (common/images.py).
    image = check(raw, max_pixels=settings.max_image_pixels, max_side=settings.max_output_side)

    job_id = uuid.uuid4()
    seed = req.seed if req.seed != -1 else secrets.randbelow(MAX_SEED - 4)
    params: dict[str, Any] = req.model_dump(exclude={"image", "base64", "seed"})
    params.update(width=image.width, height=image.height)
    key = storage.input_key(account.id, job_id, image.extension)
    store.put(key, raw, image.content_type)  # as received

    # The real in-flight check: locks the account row until commit, so concurrent
    # submits of one account count one after another (the debit below needs it too).
    limits.check_jobs_in_flight(session, account, settings, lock=True)
    # Again under the account lock: a concurrent duplicate may have committed meanwhile.
    check_unused(session, account.id, idempotency)
    job = Job(
        id=job_id,
        account_id=account.id,
        status=JobStatus.QUEUED,
        queue=settings.gpu_queue,
        work=job_work(params),
        params=params,
        seed=seed,
        cost=cost,
        input_key=key,
        output_keys=[],
        metrics={},
        idempotency_key=idempotency.key if idempotency else None,
        request_hash=idempotency.request_hash if idempotency else None,
    )
    session.add(job)
    session.flush()
    balance = credits.debit_for_job(session, account.id, job_id, cost)
    jobs.log_transition(session, job, JobStatus.QUEUED, None)
    after_commit(session, partial(CREDITS_CHARGED.inc, cost))
    # Once committed: a worker must find the row. Lost, it costs WORKER_POLL_SECONDS.
    tasks.wake_after_commit(session, settings.gpu_queue)
    return job, balance


@dataclass(frozen=True)
class Submitted:
    job: Job
    balance: int
    replayed: bool  # True: the key's original job; nothing was charged or enqueued


def submit_and_commit(
    session: Session,
    store: Storage,
    settings: Settings,
    account: Account,
    body: Img2ImgRequest,
    key: IdempotencyKey | None,
) -> Submitted:
    """`submit`, then commit: a submit's unit of work, committed here rather than by the
    request's session because a concurrent duplicate of its idempotency key is only
    known at commit (the unique index); that duplicate, or an earlier job of the key
    (`Replay`), is answered instead, charged once (api/idempotency.py)."""
    try:
        job, balance = submit(session, store, settings, account, body, idempotency=key)
        session.commit()
    except (Replay, IntegrityError):
        # Replay: the key's job exists. IntegrityError: a concurrent duplicate committed
        # first and the unique index refused this insert. Either way: read it afresh,
        # outside the rolled-back transaction, with the account's current balance.
        session.rollback()
        original = find_original(session, account.id, key) if key is not None else None
        if original is None:
            raise
        return Submitted(original, account.balance, replayed=True)
    return Submitted(job, balance, replayed=False)
