"""How `client run` shows a request on its way, by a terminal's habits:

- stdout a terminal: one line redrawn in place: the queue position while QUEUED, then a
  progress bar with steps, percentage and ETA;
- stdout a pipe or a file: one plain line per change of status or queue position,
  never a bar or a carriage return (logs and scripts read it line by line);
- colours only on a terminal, and never when `NO_COLOR` is set (https://no-color.org).
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

import click

from cli.client.follow import Update

BAR_WIDTH = 30
STATUS_COLOURS = {"COMPLETED": "green", "FAILED": "red", "CANCELLED": "yellow"}


def wants_colour(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def _eta(seconds: Any) -> str:
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    return f"  ETA {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"  ETA {seconds}s"


def progress_bar(step: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = width * min(step, total) // total if total else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class Display:
    """Renders the updates of one request on `out` (stdout by default)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty()
        self.colour = wants_colour(self.out)
        self._last_plain: tuple[Any, ...] | None = None
        self._drawn = False
        self._total: int | None = None

    def style(self, text: str, **styles: Any) -> str:
        return click.style(text, **styles) if self.colour else text

    def status_word(self, status: str) -> str:
        return self.style(status, fg=STATUS_COLOURS.get(status), bold=True)

    def line(self, text: str) -> None:
        """A line of its own (after the redrawn one, which it leaves on screen)."""
        self.clear()
        click.echo(text, file=self.out, color=self.colour)

    def clear(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self._drawn = False

    def update(self, update: Update) -> None:
        body = update.body
        status = body.get("status")
        if update.final:
            if self.live and status == "COMPLETED":
                # The bar ends full, whatever steps the stream skipped.
                self._draw(self._bar_line(self._total or 1, self._total or 1, None))
            self.clear()
            return
        if self.live:
            self._draw(self._live_line(body))
        else:
            self._plain(body)

    def _live_line(self, body: dict[str, Any]) -> str:
        if body.get("status") == "QUEUED":
            position = body.get("queue_position")
            where = f"position {position} in the queue" if position is not None else "queued"
            return f"{self.style('QUEUED', bold=True)}  {where}{_eta(body.get('eta_seconds'))}"
        total = body.get("total_steps")
        if not total:
            return f"{self.style('PROCESSING', bold=True)}  starting"
        self._total = total
        return self._bar_line(body.get("step") or 0, total, body.get("eta_seconds"))

    def _bar_line(self, step: int, total: int, eta: Any) -> str:
        percent = 100 * min(step, total) // total
        bar = self.style(progress_bar(step, total), fg="cyan")
        steps = f"  {step}/{total} steps" if self._total else ""
        return f"{bar} {percent:3d}%{steps}{_eta(eta)}"

    def _draw(self, text: str) -> None:
        # Carriage return, erase the line, draw: the line stays one line however it changes.
        self.out.write("\r\x1b[2K" + text)
        self.out.flush()
        self._drawn = True

    def _plain(self, body: dict[str, Any]) -> None:
        status = body.get("status")
        key = (status, body.get("queue_position") if status == "QUEUED" else None)
        if key == self._last_plain:
            return
        self._last_plain = key
        if status == "QUEUED" and body.get("queue_position") is not None:
            self.line(f"QUEUED  position {body['queue_position']} in the queue")
        else:
            self.line(str(status))
