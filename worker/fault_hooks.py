"""TEST-ONLY fault injection: lets the fault tests (tests/test_faults.py) make a job kill
the worker that runs it, every time, as a job that crashes the GPU driver would.

Inert unless the worker's environment sets WORKER_TEST_CRASH_PROMPT, which nothing but
those tests does; never set it in a deployment. With it set, a job whose prompt equals
that value SIGKILLs its worker right after the claim (the lease is then held by a dead
process, exactly as after a real crash).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

CRASH_PROMPT_ENV = "WORKER_TEST_CRASH_PROMPT"


def enabled() -> list[str]:
    """The fault hooks armed in this process, said for the start-up warning."""
    if os.environ.get(CRASH_PROMPT_ENV):
        return [f"{CRASH_PROMPT_ENV} is set: the worker kills itself on that prompt"]
    return []


def maybe_crash(params: Mapping[str, Any]) -> None:
    sentinel = os.environ.get(CRASH_PROMPT_ENV)
    if sentinel and params.get("prompt") == sentinel:
        logger.error("%s: prompt matches, killing this worker (test only)", CRASH_PROMPT_ENV)
        os.kill(os.getpid(), signal.SIGKILL)
