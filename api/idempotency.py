"""Idempotent submits: the `Idempotency-Key` request header, on v2 and v1.

A client that does not know whether its submit went through (a timeout, a dropped
connection) sends it again with the same key. Keys are scoped per account and stored on
the job with the SHA-256 of the request's canonical body (the validated fields, JSON
with sorted keys), under a unique index on (account_id, idempotency_key):

- same key, same body: the original request is answered (its request_id, HTTP 200,
  `Idempotent-Replayed: true`), nothing is charged, nothing runs again;
- same key, another body: 422 `{"error": ...}`, nothing is charged;
- concurrent duplicates: the account row lock of the submit serialises them, the later
  one finds the earlier one's job under the lock; the unique index backs this up (a
  duplicate insert fails, and the winner's job is answered).

A key is remembered as long as its job row exists. Submits that were refused (400, 406,
429...) store nothing: the same key may be sent again once the cause is fixed.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header
from sqlalchemy.orm import Session

from api.errors import ApiError, ErrorBody
from api.img2img.schemas import Img2ImgRequest
from common import jobs
from common.models import Job

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
_VALID_KEY = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: no spaces, no control chars

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="Optional, 1-255 visible ASCII characters. Sending a request again "
        "with the same key and body answers the original request (no second charge); "
        "the same key with another body is refused with 422.",
    ),
]

RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "Idempotency-Key already used with another body."}
}


@dataclass(frozen=True)
class IdempotencyKey:
    key: str
    request_hash: str


class Replay(Exception):
    """The key was used before with the same body: answer with this job."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"replay of request {job.id}")
        self.job = job


def body_hash(body: Img2ImgRequest) -> str:
    """SHA-256 of the canonical body: every validated field (defaults included), as
    JSON with sorted keys, so key order and omitted defaults do not matter."""
    canonical = json.dumps(
        body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse(header: str | None, body: Img2ImgRequest) -> IdempotencyKey | None:
    if header is None:
        return None
    if not 1 <= len(header) <= MAX_KEY_LENGTH or not _VALID_KEY.match(header):
        raise ApiError(400, f"{HEADER}: must be 1 to {MAX_KEY_LENGTH} visible ASCII characters")
    return IdempotencyKey(key=header, request_hash=body_hash(body))


def find_original(session: Session, account_id: uuid.UUID, key: IdempotencyKey) -> Job | None:
    """The account's job created with `key`, if any; 422 if it had another body."""
    job = jobs.by_idempotency_key(session, account_id, key.key)
    if job is not None and job.request_hash != key.request_hash:
        raise ApiError(
            422,
            f"{HEADER}: already used for request {job.id} with another body; "
            "send a new key for a new request",
        )
    return job


def check_unused(session: Session, account_id: uuid.UUID, key: IdempotencyKey | None) -> None:
    """Raise Replay (same body) or a 422 ApiError (another body) if `key` was used."""
    if key is None:
        return
    original = find_original(session, account_id, key)
    if original is not None:
        raise Replay(original)
