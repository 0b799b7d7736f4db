"""GPU worker recycling: after WORKER_MAX_JOBS jobs, or once the process's resident
memory exceeds WORKER_MAX_RSS_MB, or the GPU memory torch holds (reserved by its
caching allocator) exceeds WORKER_MAX_GPU_MEMORY_MB, the worker finishes the job it has
and exits cleanly (exit status 0), for its supervisor (docker `restart:`, systemd
`Restart=always`, a Kubernetes Deployment) to start a fresh one. A batch counts as its
number of jobs.

Celery's own `worker_max_tasks_per_child` / `worker_max_memory_per_child` act on
prefork pool children only; the GPU worker runs the solo pool (the pipeline lives in
the worker process itself), so recycling is done here: the worker sends itself SIGTERM,
Celery's warm shutdown, which stops the runner (worker/runner.py) from claiming and
lets it finish what it runs.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from common.settings import Settings

logger = logging.getLogger(__name__)


def rss_mb() -> float:
    """The process's current resident set size in MiB (its peak where /proc is missing)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def gpu_memory_mb() -> float | None:
    """GPU memory held by torch's caching allocator in MiB; None without CUDA."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.memory_reserved() / 2**20


class Recycler:
    """Counts the jobs this worker handled; asks for a warm shutdown when due."""

    def __init__(
        self,
        max_jobs: int,
        max_rss_mb: int,
        max_gpu_mb: int = 0,
        gpu_mb: Callable[[], float | None] = gpu_memory_mb,
    ) -> None:
        self.max_jobs = max_jobs
        self.max_rss_mb = max_rss_mb
        self.max_gpu_mb = max_gpu_mb
        self._gpu_mb = gpu_mb
        self.jobs = 0
        self.requested = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Recycler:
        return cls(
            settings.worker_max_jobs, settings.worker_max_rss_mb, settings.worker_max_gpu_memory_mb
        )

    def reason(self) -> str | None:
        if self.max_jobs and self.jobs >= self.max_jobs:
            return f"handled {self.jobs} jobs (WORKER_MAX_JOBS={self.max_jobs})"
        if self.max_rss_mb:
            rss = rss_mb()
            if rss > self.max_rss_mb:
                return f"RSS {rss:.0f} MiB > WORKER_MAX_RSS_MB={self.max_rss_mb}"
        if self.max_gpu_mb:
            held = self._gpu_mb()
            if held is not None and held > self.max_gpu_mb:
                return f"GPU memory {held:.0f} MiB > WORKER_MAX_GPU_MEMORY_MB={self.max_gpu_mb}"
        return None

    def jobs_done(self, count: int = 1) -> None:
        """Call after each claim ran, with its number of jobs."""
        self.jobs += count
        if self.requested:
            return
        why = self.reason()
        if why is not None:
            self.requested = True
            logger.info("recycling this worker: %s; it exits after this job", why)
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown
