"""Loopback port helpers for the embedded dev/test stack.

Every service binds 127.0.0.1 only, so "free" always means free on the loopback interface.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"

# A port handed out by free_port() is not reserved: the caller binds it later. Several
# services are started in parallel threads, each asking for ports, and the kernel may hand
# the same just-closed port out again. Remembering recent answers for a while stops one
# process from giving the same port to two services.
_RECENT_TTL_S = 60.0
_recent: dict[int, float] = {}
_lock = threading.Lock()


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when `port` can be bound on `host` right now (nothing listens there)."""
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the servers themselves (postgres, redis, Go all set it): on Linux
        # the bind still fails while something listens there, but connections of a stopped
        # server lingering in TIME_WAIT do not make its port look busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _forget_old(now: float) -> None:
    for port, handed_out in list(_recent.items()):
        if now - handed_out > _RECENT_TTL_S:
            del _recent[port]


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return `count` distinct ports that are free on `host` at the time of the call.

    All sockets stay bound until every port is chosen, so the kernel cannot give the same
    port twice within one call; `_recent` covers calls made from other threads.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        with _lock:
            now = time.monotonic()
            _forget_old(now)
            while len(ports) < count:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
                if port in _recent:
                    continue
                ports.append(port)
            for port in ports:
                _recent[port] = now
    finally:
        for sock in held:
            sock.close()
    return ports


def free_port(host: str = LOOPBACK) -> int:
    """One free port on `host` (bind to port 0 and let the kernel choose)."""
    return free_ports(1, host)[0]


def claim_port(port: int, host: str = LOOPBACK) -> bool:
    """Mark a port chosen by other means (e.g. a previous run's port) as handed out.

    Returns False when it is not free or another thread of this process already got it.
    """
    with _lock:
        now = time.monotonic()
        _forget_old(now)
        if port in _recent or not port_is_free(port, host):
            return False
        _recent[port] = now
        return True


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.05,
) -> None:
    """Block until a TCP connect to host:port succeeds.

    `alive` lets the caller stop waiting as soon as the server process has died (its log
    then says why), instead of sitting out the whole timeout. Raises TimeoutError or
    RuntimeError (process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if alive is not None and not alive():
            raise RuntimeError(f"process exited before {host}:{port} accepted connections")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout:.1f}s")
        time.sleep(interval)
