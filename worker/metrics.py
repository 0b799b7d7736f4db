"""The GPU worker's metrics (common/metrics.py has what every process exports): jobs by
outcome, their wait in the queue, the time of each phase of a generation, the
denoising speed, batch sizes, and the GPU's memory and utilisation through NVML.

Phases, per claim: `load` (the input image read from S3 and decoded), `encode`
(prompts and the VAE encode of the inputs), `denoise` (the denoising loop), `decode`
(the VAE decode to pixels), `upload` (JPEG encoding and the S3 upload of one job's
outputs). On CUDA the pipeline synchronises at the phase boundaries so each phase's
figure is its own GPU work, not a queue of kernels launched earlier.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.metrics import PREFIX

logger = logging.getLogger(__name__)

JOBS_FINISHED = Counter(
    f"{PREFIX}_jobs_finished",
    "Jobs this worker ended, by outcome.",
    ["outcome"],
)
OUTCOMES = ("completed", "failed", "cancelled")
QUEUE_WAIT = Histogram(
    f"{PREFIX}_job_queue_wait_seconds",
    "From a job's submission to its claim by a worker.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
PHASE_SECONDS = Histogram(
    f"{PREFIX}_job_phase_seconds",
    "Time of each phase of a generation (see worker/metrics.py).",
    ["phase"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
PHASES = ("load", "encode", "denoise", "decode", "upload")
STEPS_PER_SECOND = Histogram(
    f"{PREFIX}_denoise_steps_per_second",
    "Denoising iterations per second of each pipeline call (all of its images at once).",
    buckets=(0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_SIZE = Histogram(
    f"{PREFIX}_batch_size",
    "Images per pipeline call.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
READY = Gauge(
    f"{PREFIX}_worker_ready",
    "1 once the model is loaded and warmed up and the worker takes jobs.",
)


def announce() -> None:
    """Every outcome and phase at 0 from the start (rates need a first sample)."""
    for outcome in OUTCOMES:
        JOBS_FINISHED.labels(outcome=outcome)
    for phase in PHASES:
        PHASE_SECONDS.labels(phase=phase)
    READY.set(0)


class NvmlCollector(Collector):
    """`ssd_img2img_gpu_memory_used_bytes` and `ssd_img2img_gpu_utilization_ratio` of
    the GPU this process uses, read from NVML at each scrape; nothing where there is
    no NVML (no NVIDIA driver: a CPU worker)."""

    def __init__(self, device_index: int) -> None:
        self._lock = threading.Lock()
        self._handle: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        except Exception as exc:  # no driver, no library, no such device
            logger.info("no GPU metrics: NVML unavailable (%s)", type(exc).__name__)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        if self._handle is None:
            return []
        with self._lock:
            try:
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            except Exception:
                return []
        used = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use (all processes), from NVML."
        )
        used.add_metric([], float(memory.used))
        busy = GaugeMetricFamily(
            f"{PREFIX}_gpu_utilization_ratio",
            "Share of the last sample period the GPU was busy (0..1), from NVML.",
        )
        busy.add_metric([], rates.gpu / 100)
        return [used, busy]


def watch_gpu(device: Any) -> None:
    """Export the GPU's figures when `device` is a CUDA device."""
    if getattr(device, "type", None) == "cuda":
        REGISTRY.register(NvmlCollector(device.index or 0))
