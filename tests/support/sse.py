"""Reading a server-sent event stream with httpx, as a client would."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    name: str
    data: dict[str, Any]


@dataclass
class EventLog:
    """Events of one stream as they arrive (read on a thread), and how it ended."""

    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status_code: int | None = None
    content_type: str | None = None
    closed: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def names(self) -> list[str]:
        return [event.name for event in self.events]


def read_stream(client: httpx.Client, url: str, log: EventLog, timeout: float = 600) -> EventLog:
    """Read `url` until the server closes the stream, appending to `log`."""
    try:
        with client.stream("GET", url, timeout=httpx.Timeout(timeout)) as response:
            log.status_code = response.status_code
            log.content_type = response.headers.get("content-type")
            name, data = "message", []
            for line in response.iter_lines():
                if line.startswith(":"):
                    log.comments.append(line[1:].strip())
                elif line.startswith("event:"):
                    name = line[len("event:") :].strip()
                elif line.startswith("data:"):
                    data.append(line[len("data:") :].strip())
                elif line == "" and data:
                    log.events.append(Event(name, json.loads("\n".join(data))))
                    name, data = "message", []
    except BaseException as exc:
        log.error = exc
    finally:
        log.closed.set()
    return log


def stream_in_thread(client: httpx.Client, url: str) -> EventLog:
    log = EventLog()
    threading.Thread(target=read_stream, args=(client, url, log), daemon=True).start()
    return log
