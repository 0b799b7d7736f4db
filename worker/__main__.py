"""`python -m worker`: load the model, then run the pool's queued jobs.

The model is loaded before the worker claims anything, so a worker that cannot load it
stops at once with a message saying what to set, instead of failing every job: where
MODEL_ID can be seen to be wrong without torch (worker/model_source.py), within a
second, before the imports of worker/serve.py.

SIGTERM (Celery's warm shutdown) stops the runner from claiming; the process exits
once the claim it runs is recorded.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common.logs import configure_logging
from common.settings import get_settings, warn_test_only
from worker import fault_hooks
from worker.model_source import ModelLoadError, check_model_source

logger = logging.getLogger("worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--ready-file", type=Path, help="touched once the worker consumes")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings, "worker", args.loglevel)
    warn_test_only(settings, logger, *fault_hooks.enabled())
    try:
        check_model_source(settings.model_id)
    except ModelLoadError as exc:
        print(f"worker: cannot load the model: {exc}", file=sys.stderr)
        return 2

    from worker.serve import serve  # torch, diffusers: seconds of imports

    return serve(settings, args.ready_file, args.loglevel)


if __name__ == "__main__":
    sys.exit(main())
