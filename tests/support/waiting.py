"""Polling instead of fixed sleeps: the one `wait_until` every test uses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None], what: str, timeout: float = 180, interval: float = 0.05
) -> T:
    """Poll `condition` until it returns something truthy, and return that; fails the
    test with `what` after `timeout` seconds (generous: a loaded machine is slow)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"still not {what} after {timeout}s"
        time.sleep(interval)
