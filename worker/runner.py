"""The GPU worker's runner: the one thread that claims work from PostgreSQL and runs it.

It claims (common/scheduler.py) again as soon as a claim is done, and while the pool
has nothing queued it sleeps until a wake-up (a Celery message, worker/tasks.py) or
WORKER_POLL_SECONDS, whichever comes first: a lost wake-up costs at most that long,
and an extra one only makes it look once more. Celery's main thread keeps consuming
wake-ups and control messages meanwhile, so the worker also answers those mid-job.

`stop()` (SIGTERM, recycling) lets the running claim finish and takes no new one;
`pause()` / `resume()` (remote control, worker/tasks.py) hold claims without stopping.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from common import metrics
from common.settings import Settings
from common.storage import Storage
from worker import execute
from worker.prefetch import InputPrefetcher
from worker.recycle import Recycler

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLImg2ImgPipeline

logger = logging.getLogger(__name__)


class Runner:
    def __init__(
        self,
        pipe: StableDiffusionXLImg2ImgPipeline,
        store: Storage,
        settings: Settings,
        recycler: Recycler,
    ) -> None:
        self.pipe = pipe
        self.store = store
        self.settings = settings
        self.recycler = recycler
        self._woken = threading.Event()
        self._stopping = threading.Event()
        # Held while deciding to claim and claiming: once pause() returns, no claim
        # starts until resume().
        self._claim_lock = threading.Lock()
        self._paused = False
        self._thread = threading.Thread(target=self._loop, name="gpu-runner", daemon=True)
        # Uploads and records each claim while the next one generates.
        self._recorder = execute.Recorder()
        # Reads the likely next inputs while a claim generates (worker/prefetch.py).
        self._prefetcher = InputPrefetcher(
            store, settings.gpu_queue, accounts=max(2, settings.max_batch_images)
        )

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._woken.set()

    def pause(self) -> None:
        """No new claim after this returns; the running one finishes."""
        with self._claim_lock:
            self._paused = True

    def resume(self) -> None:
        with self._claim_lock:
            self._paused = False
        self._woken.set()

    @property
    def paused(self) -> bool:
        return self._paused

    def stop(self) -> None:
        """Take no new claim; the running one finishes. Safe in a signal handler."""
        self._stopping.set()
        self._woken.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _claim(self) -> execute.Claim | None:
        with self._claim_lock:
            if self._paused or self._stopping.is_set():
                return None
            try:
                return execute.claim(self.settings)
            except Exception as exc:
                # PostgreSQL unreachable, say: look again at the next poll.
                metrics.count_if_dependency(exc)
                logger.warning("could not claim work", exc_info=True)
                return None

    def _loop(self) -> None:
        logger.info(
            "claiming from pool %r (batches of up to %d images)",
            self.settings.gpu_queue,
            self.settings.max_batch_images,
        )
        while not self._stopping.is_set():
            self._woken.clear()  # before claiming: a wake-up from now on is not lost
            work = self._claim()
            if work is None:
                self._recorder.wait()  # nothing else to do: the last claim's end first
                self._woken.wait(self.settings.worker_poll_seconds)
                continue
            try:
                execute.execute(
                    work, self.pipe, self.store, self.settings, self._recorder, self._prefetcher
                )
            except Exception:
                logger.exception("running %s failed", [str(job.id) for job in work.jobs])
            self.recycler.jobs_done(len(work.jobs))
        self._recorder.close()  # a stopping worker records what it ran
        self._prefetcher.close()
        logger.info("runner stopped")
