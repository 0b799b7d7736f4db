"""Following one request until it ends: the job's server-sent event stream
(`GET /v2/requests/{id}/events`), or polling its status where the stream cannot be read
(a proxy that buffers or cuts it, an older server).

Each update is handed to the caller as a status body (the `data` of the stream's
events, or the status URL's answer); the last one is the final body of
`GET /v2/requests/{id}`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from common.models import TERMINAL_STATUSES

# The stream's last event is named after the job's terminal status, lower-cased.
TERMINAL_EVENTS = frozenset(status.value.lower() for status in TERMINAL_STATUSES)
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Update:
    """One thing that happened: `event` is the stream's event name (`status`,
    `progress`, or a terminal one), `body` its data."""

    event: str
    body: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.event in TERMINAL_EVENTS


class StreamUnavailable(Exception):
    """The event stream could not be read to its end; polling takes over."""


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) of each event in a text/event-stream; comments (`: keepalive`)
    skipped, multi-line data joined as the standard says."""
    name, data = "message", list[str]()
    for line in lines:
        if line.startswith(":"):
            continue
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


def stream(http: httpx.Client, request_id: str) -> Iterator[Update]:
    """The job's events until its last one. Raises StreamUnavailable if the stream
    does not open or ends (or breaks) before the job does."""
    try:
        with http.stream(
            "GET",
            f"/v2/requests/{request_id}/events",
            headers={"accept": "text/event-stream"},
            # Keepalive comments come every 15 s: a minute of silence is a dead stream.
            timeout=httpx.Timeout(30, read=60),
        ) as response:
            kind = response.headers.get("content-type", "")
            if response.status_code != 200 or not kind.startswith("text/event-stream"):
                raise StreamUnavailable(f"HTTP {response.status_code} {kind}")
            for name, data in sse_events(response.iter_lines()):
                update = Update(name, json.loads(data))
                yield update
                if update.final:
                    return
    except (httpx.HTTPError, ValueError) as exc:
        raise StreamUnavailable(f"{type(exc).__name__}: {exc}") from exc
    raise StreamUnavailable("the stream ended before the job")


def poll(
    get: Callable[[str], dict[str, Any]], request_id: str, sleep: float = POLL_SECONDS
) -> Iterator[Update]:
    """The job's status every `sleep` seconds until it ends, then its final body."""
    while True:
        body = get(f"/v2/requests/{request_id}/status")
        if body["status"] in TERMINAL_STATUSES:
            yield Update(body["status"].lower(), get(f"/v2/requests/{request_id}"))
            return
        yield Update("progress" if body["status"] == "PROCESSING" else "status", body)
        time.sleep(sleep)


def follow(
    http: httpx.Client, get: Callable[[str], dict[str, Any]], request_id: str
) -> Iterator[Update]:
    """The stream while it works, then polling; every update once in order (a status
    seen again after the switch is harmless: updates are states, not deltas)."""
    try:
        yield from stream(http, request_id)
        return
    except StreamUnavailable:
        pass
    yield from poll(get, request_id)
