"""The step callback does no I/O: the watcher thread beside the pipeline call does the
Redis and PostgreSQL work and raises the flag the next step obeys."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from worker import step_monitor
from worker.step_monitor import JobCancelled, StepMonitor, StepWatcher


@dataclass
class FakeIo:
    """Every network call the monitor makes, with the thread that made it; `flag` is the
    job's Redis cancel flag."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    flag: threading.Event = field(default_factory=threading.Event)

    def recorder(self, name: str, result: Any = None) -> Any:
        def call(*_: Any, **__: Any) -> Any:
            self.calls.append((name, threading.current_thread().name))
            return result() if callable(result) else result

        return call


@pytest.fixture
def io(monkeypatch: pytest.MonkeyPatch) -> FakeIo:
    fake = FakeIo()
    flag = fake.recorder("flag", fake.flag.is_set)
    monkeypatch.setattr(step_monitor.cancel_flags, "is_raised", flag)
    monkeypatch.setattr(step_monitor.progress, "write", fake.recorder("progress"))
    monkeypatch.setattr(step_monitor, "maybe_record_progress_event", fake.recorder("webhooks"))
    return fake


def test_the_step_callback_makes_no_network_call(io: FakeIo) -> None:
    monitor = StepMonitor(uuid.uuid4())
    for step in range(1, 200):
        monitor(step, 200)
    assert io.calls == []
    monitor.poll()
    assert {name for name, _ in io.calls} == {"flag", "progress", "webhooks"}


def test_the_watcher_polls_on_its_own_thread_and_the_next_step_stops(io: FakeIo) -> None:
    monitor = StepMonitor(uuid.uuid4())
    deferred: list[str] = []
    watcher = StepWatcher(lambda: [monitor], interval=0.01)
    watcher.start()
    try:
        monitor(1, 10)
        watcher.step_taken()
        io.flag.set()  # the cancel flag goes up
        with pytest.raises(JobCancelled):
            for step in range(2, 10**7):  # steps go on until the watcher has seen it
                monitor(step, 10**7)
        watcher.later(lambda: deferred.append(threading.current_thread().name))
    finally:
        watcher.stop()
    assert deferred == ["step-watcher"]  # handed-over work ran on the watcher
    assert io.calls and {thread for _, thread in io.calls} == {"step-watcher"}
