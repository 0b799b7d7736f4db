"""`python -m worker`: load the model, then run the pool's queued jobs.

The model is loaded before the worker claims anything, so a worker that cannot load it
stops at once with a message saying what to set, instead of failing every job. Then
the runner thread claims work from PostgreSQL (worker/runner.py) while Celery, in the
main thread, consumes the pool's wake-ups and remote-control messages.

SIGTERM (Celery's warm shutdown) stops the runner from claiming; the process exits
once the claim it runs is recorded.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from common.settings import get_settings, warn_test_only
from common.storage import get_storage
from worker import fault_hooks, runtime, tuning
from worker.pipeline import ModelLoadError, load_pipeline, resolve_device
from worker.recycle import Recycler
from worker.runner import Runner

logger = logging.getLogger("worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--ready-file", type=Path, help="touched once the worker consumes")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    settings = get_settings()
    warn_test_only(settings, logger, *fault_hooks.enabled())
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
    runtime.set_pipeline(pipe)
    runner = Runner(pipe, get_storage(), settings, Recycler.from_settings(settings))
    runtime.set_runner(runner)

    from worker.tasks import app  # registers the task and the control commands

    @worker_shutting_down.connect(weak=False)
    def _stop_claiming(**_: Any) -> None:  # in the signal handler: only sets flags
        runner.stop()

    @worker_shutdown.connect(weak=False)
    def _finish_running(**_: Any) -> None:
        runner.join()

    ready_file: Path | None = args.ready_file

    # Claims start once Celery is connected and listening: the worker then answers
    # control messages (pause_claims) before it takes any job.
    @worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        runner.start()
        if ready_file is not None:
            ready_file.write_text("ready\n")

    # Solo pool: tasks only wake the runner, in this process.
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={settings.gpu_queue}",
            f"--loglevel={args.loglevel}",
            f"--hostname=gpu-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    runner.stop()
    runner.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
