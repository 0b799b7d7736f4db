"""A real webhook receiver on 127.0.0.1 for the webhook tests: it records every request
(method, path, headers, body) and answers each path from a script of statuses, then
200 once the script is used up."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from tests.support.loopback_http import serving


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    def verify(self, secret: str) -> dict[str, Any]:
        """The payload, after the standardwebhooks library accepted the signature."""
        data: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return data

    def signatures(self) -> list[str]:
        return self.headers["webhook-signature"].split(" ")


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Receiver:
    port: int
    received: list[Received] = field(default_factory=list)
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *answers: int | Answer) -> None:
        """Answer the next requests to `path` with these, in order; then 200."""
        with self.lock:
            self.scripts[path] = [a if isinstance(a, Answer) else Answer(a) for a in answers]

    def always(self, path: str, status: int, count: int = 1000) -> None:
        self.script(path, *([status] * count))

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 120) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            seen = self.at(path)
            if len(seen) >= count:
                return seen
            assert time.monotonic() < deadline, f"{path}: {len(seen)} of {count} requests"
            time.sleep(0.05)

    def _next_answer(self, path: str) -> Answer:
        with self.lock:
            script = self.scripts.get(path)
            return script.pop(0) if script else Answer(200)


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            receiver = state["receiver"]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with receiver.lock:
                receiver.received.append(
                    Received(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
            answer = receiver._next_answer(self.path)
            reply = b"ok"
            self.send_response(answer.status)
            for name, value in {"Content-Length": str(len(reply)), **answer.headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply)

        do_POST = _handle
        do_GET = _handle

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    receiver = Receiver(port=httpd.server_address[1])
    state["receiver"] = receiver
    with serving(httpd):
        yield receiver
