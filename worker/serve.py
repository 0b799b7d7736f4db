"""The worker once its model source checked out (worker/__main__.py): load the model,
warm it up, then claim from PostgreSQL (worker/runner.py) in the runner thread while
Celery, in the main thread, consumes the pool's wake-ups and remote-control messages.

Claims start once Celery listens, so the worker answers control messages (pause_claims)
before it takes any job.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from common import metrics
from common.settings import Settings
from common.storage import get_storage
from worker import metrics as worker_metrics
from worker import runtime, tuning
from worker.model_source import ModelLoadError
from worker.pipeline import load_pipeline, resolve_device
from worker.recycle import Recycler
from worker.runner import Runner

logger = logging.getLogger("worker")


def serve(settings: Settings, ready_file: Path | None, loglevel: str) -> int:
    """Run until SIGTERM (or recycling); the exit status (2: the model did not load)."""
    metrics.announce("worker")
    worker_metrics.announce()
    # Up from here: alive while the model loads (minutes for a first download), ready
    # only once it is loaded, warmed up and the worker consumes its queue.
    ready = threading.Event()
    try:
        metrics.serve_ops(
            settings.metrics_port,
            lambda: None if ready.is_set() else "the model is loading or warming up",
        )
    except metrics.OpsPortError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    logger.info("loading %s (device=%s)", settings.model_id, settings.model_device)
    try:
        device = resolve_device(settings.model_device)
        threads = tuning.torch_threads(settings.torch_threads, device.type)
        torch.set_num_threads(threads)
        pipe = load_pipeline(
            settings.model_id,
            settings.model_device,
            settings.model_variant,
            settings.model_dtype,
            settings.vae_id,
        )
        buckets = [tuning.parse_size(size) for size in settings.shape_buckets]
    except (ModelLoadError, ValueError) as exc:
        print(f"worker: cannot load the model: {exc}", file=sys.stderr)
        return 2
    done = tuning.optimise(pipe, device)
    if settings.torch_compile:
        tuning.compile_unet(pipe, buckets)
        done.append(f"torch.compile for {settings.shape_buckets}")
    logger.info("%d CPU threads; %s", threads, ", ".join(done) or "eager, as loaded")
    tuning.warm_up(pipe, tuning.warmup_sizes(settings.warmup, device.type, buckets))
    worker_metrics.watch_gpu(device)
    runtime.set_pipeline(pipe)
    runner = Runner(pipe, get_storage(), settings, Recycler.from_settings(settings))
    runtime.set_runner(runner)

    from worker.tasks import app  # registers the task and the control commands

    @worker_shutting_down.connect(weak=False)
    def _stop_claiming(**_: Any) -> None:  # in the signal handler: only sets flags
        runner.stop()
        ready.clear()  # draining: no longer ready, though alive until its job ends
        worker_metrics.READY.set(0)

    @worker_shutdown.connect(weak=False)
    def _finish_running(**_: Any) -> None:
        runner.join()

    # Claims start once Celery is connected and listening: the worker then answers
    # control messages (pause_claims) before it takes any job.
    @worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        runner.start()
        ready.set()
        worker_metrics.READY.set(1)
        if ready_file is not None:
            ready_file.write_text("ready\n")

    # Solo pool: tasks only wake the runner, in this process.
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={settings.gpu_queue}",
            f"--loglevel={loglevel}",
            f"--hostname=gpu-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    runner.stop()
    runner.join()
    return 0
