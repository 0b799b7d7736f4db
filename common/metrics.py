"""Prometheus metrics: what every process exports, and the small HTTP server through
which every process serves `/metrics` and its health on METRICS_PORT.

The metrics are not on the API's public port: aggregate figures (requests, credits
charged) would let a tenant infer another's activity. Only Prometheus reaches
METRICS_PORT (the NetworkPolicies in infra/k8s/).

Each process defines its own metrics in its own module (api/metrics.py,
worker/metrics.py, background/metrics.py) so that a process exports only what it
measures; the names all start with `ssd_img2img_` (docs/operations.md "Metrics", and
the dashboard and alerts in infra/observability/).

Several API processes on one host (uvicorn --workers N) share their figures through
files: set PROMETHEUS_MULTIPROC_DIR to an empty folder before they start; each binds
METRICS_PORT with SO_REUSEPORT and whichever answers a scrape serves the sum over all
of them (prometheus_client's multi-process mode; the `process_*` series are then not exported,
each process's own being meaningless in a sum).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

logger = logging.getLogger(__name__)

PREFIX = "ssd_img2img"

BUILD_INFO = Gauge(
    f"{PREFIX}_build_info",
    "1, labelled with the process kind and the service version.",
    ["process", "version"],
    multiprocess_mode="max",
)
DEPENDENCY_ERRORS = Counter(
    f"{PREFIX}_dependency_errors",
    "Calls to PostgreSQL, Redis or S3 that failed (an outage, a timeout).",
    ["dependency"],
)
DEPENDENCIES = ("postgres", "redis", "s3")


def service_version() -> str:
    try:
        return version("ssd-img2img")
    except PackageNotFoundError:
        return "unknown"


def announce(process: str) -> None:
    """Set this process's build info, and show every dependency's error count at 0
    (a counter that appears only at its first error cannot be rated)."""
    BUILD_INFO.labels(process=process, version=service_version()).set(1)
    for dependency in DEPENDENCIES:
        DEPENDENCY_ERRORS.labels(dependency=dependency)


def dependency_error(dependency: str) -> None:
    DEPENDENCY_ERRORS.labels(dependency=dependency).inc()


def dependency_of(exc: BaseException) -> str | None:
    """Which dependency `exc` says failed: "postgres", "redis", "s3", or None."""
    from botocore.exceptions import BotoCoreError, ClientError
    from redis import RedisError
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return "postgres"
    if isinstance(exc, RedisError):
        return "redis"
    if isinstance(exc, BotoCoreError | ClientError):
        return "s3"
    return None


def count_if_dependency(exc: BaseException) -> None:
    """Count `exc` in `ssd_img2img_dependency_errors_total` if a dependency failed."""
    dependency = dependency_of(exc)
    if dependency is not None:
        dependency_error(dependency)


def _multiprocess_dir() -> Path | None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(folder) if folder else None


def forget_dead_processes() -> None:
    """At a process's start in multi-process mode: drop the live gauges of processes
    that are gone (a uvicorn worker killed without its shutdown), or their v1 waits and
    streams would stay counted. Counters and histograms keep their totals."""
    folder = _multiprocess_dir()
    if folder is None:
        return
    for path in folder.glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            prometheus_multiprocess.mark_process_dead(pid)
        except PermissionError:
            pass  # alive, another user's


def leaving() -> None:
    """At a process's orderly end in multi-process mode: its live gauges go with it."""
    if _multiprocess_dir() is not None:
        prometheus_multiprocess.mark_process_dead(os.getpid())


def exposition() -> bytes:
    """This process's metrics in Prometheus' text format; in multi-process mode, those
    of every process sharing PROMETHEUS_MULTIPROC_DIR."""
    if _multiprocess_dir() is not None:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


CONTENT_TYPE = CONTENT_TYPE_LATEST


class OpsPortError(RuntimeError):
    """METRICS_PORT is taken (another process of this host has it) or not allowed."""


class _OpsServer(ThreadingHTTPServer):
    daemon_threads = True


def serve_ops(port: int, readiness: Callable[[], str | None]) -> ThreadingHTTPServer | None:
    """Serve `/metrics`, `/health/live` and `/health/ready` on `port` (all interfaces)
    from a daemon thread; None when `port` is 0. `readiness()` is None when the process
    is ready, else why not (the 503's error)."""
    if port == 0:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, exposition(), CONTENT_TYPE)
            elif self.path == "/health/live":
                self._json(200, {"status": "ok"})
            elif self.path == "/health/ready":
                why = readiness()
                if why is None:
                    self._json(200, {"status": "ok"})
                else:
                    self._json(503, {"error": why})
            else:
                self._json(404, {"error": "not found"})

        def _json(self, status: int, body: dict[str, str]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not worth a log line

    # Several uvicorn workers of one API bind the same port (see the module docstring);
    # otherwise a second process on the port is a mistake that must fail loudly.
    _OpsServer.allow_reuse_port = _multiprocess_dir() is not None
    try:
        server = _OpsServer(("0.0.0.0", port), Handler)  # scraped from other hosts
    except OSError as exc:
        raise OpsPortError(
            f"METRICS_PORT {port} cannot be used ({exc.strerror}): give each process on "
            "this host a port of its own, or METRICS_PORT=0 for none"
        ) from exc
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    logger.info("metrics and health on port %d", port)
    return server
