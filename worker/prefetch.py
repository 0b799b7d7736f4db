"""Reading the next jobs' inputs while the GPU runs the current claim.

The next claim is only decided when the GPU is free (the fair order and the batch are
chosen from what is queued then, and a claimed job is leased and PROCESSING), so the
worker does not claim early. It guesses instead: while a pipeline call runs, a thread
reads the head of the fair order (each least-served account's first queued job, no
locks taken), downloads those inputs from S3 and makes them what the pipeline takes
(common/images.py `normalise`). When the next claim names one of them, its input is
ready; a wrong guess costs one S3 GET and is dropped. Inputs never change once stored,
so a prefetched one is always the job's own.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from PIL import Image
from sqlalchemy import text

from common import images
from common.db import session_scope
from common.storage import Storage

logger = logging.getLogger(__name__)

# The first queued job of each of the least-served accounts of the pool: the likely
# heads of the next claims (common/scheduler.py's order, read without locks).
_LIKELY_NEXT = text(
    """
    SELECT j.input_key, (j.params ->> 'width')::int, (j.params ->> 'height')::int
    FROM (SELECT account_id, head_seq FROM account_queues
          WHERE queue = :queue AND queued > 0
          ORDER BY pass, account_id LIMIT :accounts) AS q
    CROSS JOIN LATERAL (
        SELECT input_key, params FROM jobs
        WHERE jobs.account_id = q.account_id AND jobs.queue = :queue
          AND jobs.status = 'QUEUED' AND jobs.queue_seq >= q.head_seq
        ORDER BY queue_seq LIMIT 1) AS j
    """
)
# Inputs kept ready at most (the oldest dropped first): a few claims' worth.
KEEP = 8


class InputPrefetcher:
    def __init__(self, store: Storage, queue: str, accounts: int = 2) -> None:
        self._store = store
        self._queue = queue
        self._accounts = accounts
        self._ready: OrderedDict[tuple[str, int, int], Image.Image] = OrderedDict()
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._pending: Future[None] | None = None

    def start(self, exclude: set[str]) -> None:
        """Begin reading the likely next inputs (not those in `exclude`: the current
        claim's) on the prefetch thread; a read still running is left to finish."""
        if self._pending is not None and not self._pending.done():
            return
        self._pending = self._thread.submit(self.fetch_now, exclude)

    def fetch_now(self, exclude: set[str]) -> None:
        """Read the likely next inputs here and now. Never raises: a failed guess only
        means the claim reads its input itself."""
        try:
            with session_scope() as session:
                rows = session.execute(
                    _LIKELY_NEXT, {"queue": self._queue, "accounts": self._accounts}
                ).all()
            for input_key, width, height in rows:
                key = (input_key, width, height)
                with self._lock:
                    if input_key in exclude or key in self._ready:
                        continue
                image = images.normalise(self._store.get(input_key), width, height)
                with self._lock:
                    self._ready[key] = image
                    while len(self._ready) > KEEP:
                        self._ready.popitem(last=False)
        except Exception:
            logger.debug("prefetching the next inputs failed", exc_info=True)

    def take(self, input_key: str, width: int, height: int) -> Image.Image | None:
        """The prefetched input of a claimed job, once; None if it was not guessed."""
        with self._lock:
            return self._ready.pop((input_key, width, height), None)

    def wait(self) -> None:
        """Until the read started last, if any, is done."""
        if self._pending is not None:
            self._pending.result()

    def close(self) -> None:
        self._thread.shutdown(wait=True)
