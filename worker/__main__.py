"""`python -m worker`: load the model, then consume the GPU queue.

The model is loaded before the worker takes any message, so a worker that cannot load
it stops at once with a message saying what to set, instead of failing every job.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from celery.signals import worker_ready

from common.settings import get_settings
from worker import runtime
from worker.pipeline import ModelLoadError, load_pipeline

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
    logger.info("loading %s (device=%s)", settings.model_id, settings.model_device)
    try:
        pipe = load_pipeline(settings.model_id, settings.model_device, settings.model_variant)
    except ModelLoadError as exc:
        print(f"worker: cannot load the model: {exc}", file=sys.stderr)
        return 2
    runtime.set_pipeline(pipe)

    from worker.tasks import app  # registers the task

    if args.ready_file is not None:
        ready_file: Path = args.ready_file

        @worker_ready.connect(weak=False)
        def _ready(**_: object) -> None:
            ready_file.write_text("ready\n")

    # Solo pool: the pipeline lives in this process and runs one job at a time.
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
