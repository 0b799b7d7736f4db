"""`client run`'s display and event parsing without a service (cli/client/display.py,
cli/client/follow.py): what a terminal gets and what a pipe gets."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from cli.client.display import Display, progress_bar
from cli.client.follow import Update, sse_events

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
COLOUR = re.compile(r"\x1b\[[0-9;]*m")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def journey() -> list[Update]:
    """A request queued behind two others, then processing, then completed."""
    request = {"request_id": "r1"}
    return [
        Update("status", {**request, "status": "QUEUED", "queue_position": 2}),
        Update("status", {**request, "status": "QUEUED", "queue_position": 2}),
        Update("status", {**request, "status": "QUEUED", "queue_position": 1}),
        Update("status", {**request, "status": "PROCESSING", "progress": 0.0}),
        Update(
            "progress",
            {**request, "status": "PROCESSING", "step": 3, "total_steps": 12, "eta_seconds": 9},
        ),
        Update(
            "progress",
            {**request, "status": "PROCESSING", "step": 6, "total_steps": 12, "eta_seconds": 5},
        ),
        Update("completed", {**request, "status": "COMPLETED", "output": ["u"], "seed": 7}),
    ]


def shown(out: io.StringIO, updates: list[Update]) -> str:
    display = Display(out)
    for update in updates:
        display.update(update)
    display.line(display.status_word("COMPLETED"))
    return out.getvalue()


def test_a_pipe_gets_one_plain_line_per_change_and_no_bar() -> None:
    text = shown(io.StringIO(), journey())
    assert text.splitlines() == [
        "QUEUED  position 2 in the queue",
        "QUEUED  position 1 in the queue",
        "PROCESSING",
        "COMPLETED",
    ]
    assert "\r" not in text and not ANSI.search(text)


def test_a_terminal_gets_one_line_redrawn_then_a_full_bar(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    text = shown(Terminal(), journey())
    frames = [ANSI.sub("", frame) for frame in text.split("\r\x1b[2K") if frame]
    assert frames[0].startswith("QUEUED  position 2 in the queue")
    assert "[" + "#" * 7 + "-" * 23 + "]  25%  3/12 steps  ETA 9s" in frames
    assert frames[-1].startswith("[" + "#" * 30 + "] 100%  12/12 steps\n")
    assert text.count("\n") == 2  # the bar's line, then the status line
    assert COLOUR.search(text)  # coloured


def test_no_color_keeps_the_bar_without_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    text = shown(Terminal(), journey())
    assert "\r\x1b[2K" in text and "100%" in text
    assert not COLOUR.search(text)


@pytest.mark.parametrize(
    ("step", "total", "bar"),
    [
        (0, 10, "[" + "-" * 30 + "]"),
        (5, 10, "[" + "#" * 15 + "-" * 15 + "]"),
        (12, 10, "[" + "#" * 30 + "]"),
    ],
)
def test_progress_bar_fill(step: int, total: int, bar: str) -> None:
    assert progress_bar(step, total) == bar


def test_event_stream_parsing_follows_the_standard() -> None:
    lines = [
        ": keepalive",
        "event: status",
        'data: {"a":',
        "data: 1}",
        "",
        "",
        "data:{}",
        "",
        "event: completed",
        'data: {"b": 2}',
        "",
    ]
    events: list[tuple[str, Any]] = list(sse_events(iter(lines)))
    assert events == [("status", '{"a":\n1}'), ("message", "{}"), ("completed", '{"b": 2}')]
