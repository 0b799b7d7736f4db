"""The API process's metrics (common/metrics.py has what every process exports).

Gauges of work in flight use the "livesum" multi-process mode: with several uvicorn
workers, /metrics reports the sum over the live processes."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from common.metrics import PREFIX

HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by method, route (the path template) and status code.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time to answer an HTTP request (a v1 request includes its wait for the job).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
SYNC_WAITS = Gauge(
    f"{PREFIX}_sync_waits_in_flight",
    "Synchronous (v1) requests waiting for their job.",
    multiprocess_mode="livesum",
)
EVENT_STREAMS = Gauge(
    f"{PREFIX}_event_streams_in_flight",
    "Open event streams (GET /v2/requests/{request_id}/events).",
    multiprocess_mode="livesum",
)
CREDITS_CHARGED = Counter(
    f"{PREFIX}_credits_charged",
    "Credits charged at submission (samples × steps; refunds are not subtracted).",
)
