"""The small HTTP server every process runs on METRICS_PORT (common/metrics.py
`serve_ops`): /metrics, /health/live, /health/ready with the process's own readiness,
and a clear refusal when the port is taken."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from common import metrics
from devstack.ports import free_port


def test_it_serves_metrics_liveness_and_the_process_readiness() -> None:
    ready = threading.Event()
    port = free_port()
    server = metrics.serve_ops(port, lambda: None if ready.is_set() else "loading the model")
    assert server is not None
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health/live").json() == {"status": "ok"}
        not_yet = httpx.get(f"{url}/health/ready")
        assert (not_yet.status_code, not_yet.json()) == (503, {"error": "loading the model"})
        ready.set()
        assert httpx.get(f"{url}/health/ready").status_code == 200
        scraped = httpx.get(f"{url}/metrics")
        assert scraped.status_code == 200 and "process_start_time_seconds" in scraped.text
        assert httpx.get(f"{url}/other").status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_port_zero_serves_nothing() -> None:
    assert metrics.serve_ops(0, lambda: None) is None


def test_a_taken_port_is_refused_with_what_to_do() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(metrics.OpsPortError, match=f"METRICS_PORT {port} cannot be used"):
            metrics.serve_ops(port, lambda: None)
