"""Bounds of open work in one API process, per account and in all: image URL fetches
(each holds a request thread while a remote server answers, maybe one byte a second)
and streams (event streams and v1 waits: each holds a connection and some memory).

Without them one tenant could take every request thread with slow URLs, or open
thousands of streams, and every other tenant would wait. Past a bound the request is
refused at once with 429 and `Retry-After`, before anything is charged or stored.

The counts are per process, in memory: they bound what this process spends, need no
round trip, and cannot leak past a crash. With P API processes an account may have up
to P times its bound open in all (docs/security.md).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from enum import StrEnum

from api.errors import ApiError


class Work(StrEnum):
    URL_FETCH = "url_fetch"
    STREAM = "stream"


_REFUSALS = {
    Work.URL_FETCH: (
        "too many image URL fetches at once: this account may fetch at most {bound} at a "
        "time; retry when one ends, or send the image as base64",
        "5",
    ),
    Work.STREAM: (
        "too many open streams: this account may hold at most {bound} event streams and "
        "v1 waits open at once; close one, or poll GET /v2/requests/{{id}}/status",
        "10",
    ),
}
_PROCESS_REFUSAL = (
    "the service is fetching too many image URLs right now; retry shortly, or send the "
    "image as base64"
)


class Slot:
    """One unit of open work, counted until released (idempotent: a stream's end and
    its finaliser may both release it)."""

    def __init__(self, counts: OpenWork, work: Work, account_id: uuid.UUID) -> None:
        self._counts, self._work, self._account_id = counts, work, account_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._counts._release(self._work, self._account_id)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class OpenWork:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # fetches count from threads, streams from the loop
        self._by_account: Counter[tuple[Work, uuid.UUID]] = Counter()
        self._total: Counter[Work] = Counter()

    def take(
        self, work: Work, account_id: uuid.UUID, bound: int, process_bound: int | None = None
    ) -> Slot:
        """A slot of `work` for the account; 429 when it already has `bound` open, or
        the process `process_bound` of all accounts."""
        with self._lock:
            if self._by_account[work, account_id] >= bound:
                message, retry = _REFUSALS[work]
                raise ApiError(429, message.format(bound=bound), {"Retry-After": retry})
            if process_bound is not None and self._total[work] >= process_bound:
                raise ApiError(429, _PROCESS_REFUSAL, {"Retry-After": "5"})
            self._by_account[work, account_id] += 1
            self._total[work] += 1
        return Slot(self, work, account_id)

    def open(self, work: Work, account_id: uuid.UUID | None = None) -> int:
        with self._lock:
            if account_id is None:
                return self._total[work]
            return self._by_account[work, account_id]

    def _release(self, work: Work, account_id: uuid.UUID) -> None:
        with self._lock:
            self._by_account[work, account_id] -= 1
            if self._by_account[work, account_id] <= 0:
                del self._by_account[work, account_id]
            self._total[work] -= 1


# One per process: the bounds are what this process spends.
open_work = OpenWork()
