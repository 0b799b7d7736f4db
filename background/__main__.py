"""`python -m background`: the CPU worker (webhook deliveries, maintenance),
with the beat scheduler embedded so periodic tasks run without a separate process.

Periodic tasks must be safe when several replicas run them at once (each replica
embeds its own scheduler): they work through PostgreSQL row locks, not through beat.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import threading
from pathlib import Path

from celery.signals import worker_ready

from background import metrics as background_metrics
from background.app import load_tasks
from common import metrics as common_metrics
from common.logs import configure_logging
from common.settings import get_settings, warn_test_only

logger = logging.getLogger("background")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m background", description=__doc__)
    parser.add_argument("--ready-file", type=Path, help="touched once the worker consumes")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings, "background", args.loglevel)
    warn_test_only(settings, logger)
    app = load_tasks()
    common_metrics.announce("background")
    background_metrics.install()
    consuming = threading.Event()
    try:
        common_metrics.serve_ops(
            settings.metrics_port, lambda: None if consuming.is_set() else "starting"
        )
    except common_metrics.OpsPortError as exc:
        print(f"background: {exc}", file=sys.stderr)
        return 2

    @worker_ready.connect(weak=False)
    def _consuming(**_: object) -> None:
        consuming.set()

    if args.ready_file is not None:
        ready_file: Path = args.ready_file

        @worker_ready.connect(weak=False)
        def _ready(**_: object) -> None:
            ready_file.write_text("ready\n")

    schedule_file = Path(tempfile.gettempdir()) / f"ssd-img2img-beat-{os.getpid()}"
    app.worker_main(
        [
            "worker",
            "--pool=threads",  # I/O-bound work (HTTP deliveries, SQL): threads suffice
            f"--concurrency={args.concurrency}",
            f"--queues={settings.cpu_queue}",
            f"--loglevel={args.loglevel}",
            f"--hostname=cpu-{os.getpid()}@{socket.gethostname()}",
            "--beat",
            f"--schedule={schedule_file}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
