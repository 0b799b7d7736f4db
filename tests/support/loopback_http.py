"""A real HTTP(S) server on 127.0.0.1 for fetch tests: fixed routes, and a record of
what each request looked like on the wire (Host header, TLS server name)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A route writes its whole response itself (status line, headers, body): tests need
# responses no well-behaved framework would send (lying lengths, stalls, drips).
Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    path: str
    host: str | None


@dataclass
class LoopbackServer:
    port: int
    routes: dict[str, Route]
    requests: list[Seen] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # SNI, https only
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def respond(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        all_headers = {"Content-Length": str(len(body)), **(headers or {})}
        for name, value in all_headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    return route


def redirect(location: str, status: int = 302) -> Route:
    return respond(status, headers={"Location": location})


def unsized(body: bytes) -> Route:
    """No Content-Length: the body runs until the connection closes."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)

    return route


def stalled(server: LoopbackServer) -> Route:
    """Headers and a first byte, then nothing until the test ends."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"x")
        handler.wfile.flush()
        server.stop.wait(30)

    return route


def dripping(server: LoopbackServer, interval: float = 0.05) -> Route:
    """One byte at a time, each well within any per-read timeout, for a long while."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        for _ in range(100000):
            if server.stop.is_set():
                return
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(interval)

    return route


@contextmanager
def loopback_server(tls: ssl.SSLContext | None = None) -> Iterator[LoopbackServer]:
    """Routes are added to `.routes` by the test; unknown paths answer 404."""
    state: dict[str, LoopbackServer] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            server = state["server"]
            server.requests.append(Seen(self.path, self.headers.get("Host")))
            server.routes.get(self.path, respond(404, b"not found"))(self)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server = LoopbackServer(port=httpd.server_address[1], routes={})
    state["server"] = server
    if tls is not None:

        def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            server.server_names.append(name)

        tls.sni_callback = record_sni
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    with serving(httpd):
        try:
            yield server
        finally:
            server.stop.set()  # releases handlers that wait on it, before the shutdown


@contextmanager
def serving(httpd: ThreadingHTTPServer) -> Iterator[None]:
    """Serve `httpd` from a daemon thread until the block ends, then close it."""
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers (nor reads): a
    dead receiver, a firewall, a hung proxy."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
