"""Small helpers shared by the tests."""

from __future__ import annotations

import base64
import io
import time
import uuid
from typing import Any

import httpx
from PIL import Image
from sqlalchemy import func

from common.db import session_scope
from common.models import Account, AccountStatus, Job, JobStatus

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


def image_b64(
    width: int = 96, height: int = 80, fmt: str = "PNG", color: tuple[int, int, int] = (200, 40, 90)
) -> str:
    img = Image.new("RGB", (width, height), color)
    for x in range(0, width, 8):  # some structure, so the encoder sees edges
        img.putpixel((x, x % height), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def job_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": image_b64(),
        "prompt": "a red square in the style of a watercolor",
        "samples": 1,
        "num_inference_steps": 20,
        "strength": 0.3,
        "scheduler": "Euler",
        "seed": 7,
    }
    body.update(overrides)
    return body


def wait_terminal(client: httpx.Client, status_url: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(status_url).json()
        if body["status"] in TERMINAL:
            return body
        assert time.monotonic() < deadline, f"job still {body['status']} after {timeout}s"
        time.sleep(0.1)


# A worker pool (jobs.queue) that no worker of the live stack serves.
HELD_POOL = "tests-held"


def insert_job(
    account_id: str,
    status: JobStatus,
    *,
    cost: int = 0,
    input_key: str = "inputs/none.png",
    queue: str = HELD_POOL,
    **params: Any,
) -> uuid.UUID:
    """A job row written straight to PostgreSQL and committed, with no debit, in a worker
    pool that no worker serves (unless `queue` says otherwise): the test decides what
    happens to it (tests.support.extra_api.run_on_the_workers lets the live worker run
    it). `params` add to (or replace) the defaults."""
    job = job_row(account_id, status, cost=cost, input_key=input_key, queue=queue, **params)
    with session_scope() as session:
        session.add(job)
    return job.id


def job_row(
    account_id: str | uuid.UUID,
    status: JobStatus,
    *,
    cost: int = 0,
    input_key: str = "inputs/none.png",
    queue: str = HELD_POOL,
    **params: Any,
) -> Job:
    """The row `insert_job` writes, for a session of the test's own to add."""
    defaults = {
        "prompt": "p",
        "negative_prompt": None,
        "samples": 1,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "strength": 0.5,
        "scheduler": "Euler",
    }
    return Job(
        id=uuid.uuid4(),
        account_id=uuid.UUID(str(account_id)),
        status=status,
        queue=queue,
        params={**defaults, **params},
        seed=1,
        cost=cost,
        input_key=input_key,
        output_keys=[],
        metrics={},
        error="made by the test" if status == JobStatus.FAILED else None,
        started_at=None if status == JobStatus.QUEUED else func.now(),
    )


def insert_account(name: str = "test") -> uuid.UUID:
    """An account row written straight to PostgreSQL (no key, no credits), for tests of
    the database alone; tests through the API use Stack.create_account."""
    account_id = uuid.uuid4()
    with session_scope() as session:
        session.add(Account(id=account_id, name=name, balance=0, status=AccountStatus.ACTIVE))
    return account_id
