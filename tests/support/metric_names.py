"""The metric contract: every Prometheus series the processes export, by name, with its
type, its labels and the processes that export it.

One list for both sides: tests/test_observability.py checks that the dashboard and the
alert rules (infra/observability/) ask only for these, with these labels; the service's
own tests check that each process really exports its part. A metric renamed in the code
but not here (or here but not in the dashboard) fails one of them.

Names are as PromQL sees them: a counter with its `_total` suffix, a histogram by its
base name (its series are `<name>_bucket` with the extra label `le`, `<name>_sum` and
`<name>_count`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["counter", "gauge", "histogram"]
Process = Literal["api", "worker", "background"]

PREFIX = "ssd_img2img_"
ALL_PROCESSES: frozenset[Process] = frozenset({"api", "worker", "background"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class MetricSpec:
    """What one metric is: its type, its label names, and who exports it."""

    type: MetricType
    labels: frozenset[str]
    processes: frozenset[Process]


def _spec(type_: MetricType, labels: tuple[str, ...], *processes: Process) -> MetricSpec:
    return MetricSpec(type_, frozenset(labels), frozenset(processes) or ALL_PROCESSES)


METRICS: dict[str, MetricSpec] = {
    # Every process.
    "ssd_img2img_build_info": _spec("gauge", ("process", "version")),
    "ssd_img2img_dependency_errors_total": _spec("counter", ("dependency",)),
    # The API (METRICS_PORT, 9100: not its public port).
    "ssd_img2img_http_requests_total": _spec("counter", ("method", "route", "status"), "api"),
    "ssd_img2img_http_request_duration_seconds": _spec("histogram", ("method", "route"), "api"),
    "ssd_img2img_sync_waits_in_flight": _spec("gauge", (), "api"),
    "ssd_img2img_event_streams_in_flight": _spec("gauge", (), "api"),
    "ssd_img2img_credits_charged_total": _spec("counter", (), "api"),
    # The GPU worker (METRICS_PORT, 9100).
    "ssd_img2img_jobs_finished_total": _spec("counter", ("outcome",), "worker"),
    "ssd_img2img_job_queue_wait_seconds": _spec("histogram", (), "worker"),
    "ssd_img2img_job_phase_seconds": _spec("histogram", ("phase",), "worker"),
    "ssd_img2img_denoise_steps_per_second": _spec("histogram", (), "worker"),
    "ssd_img2img_batch_size": _spec("histogram", (), "worker"),
    "ssd_img2img_gpu_memory_used_bytes": _spec("gauge", (), "worker"),
    "ssd_img2img_gpu_utilization_ratio": _spec("gauge", (), "worker"),
    "ssd_img2img_worker_ready": _spec("gauge", (), "worker"),
    # The background worker (METRICS_PORT, 9100); the queue gauges once per deployment.
    "ssd_img2img_webhook_attempts_total": _spec("counter", ("outcome",), "background"),
    "ssd_img2img_webhook_delivery_lag_seconds": _spec("histogram", (), "background"),
    "ssd_img2img_reconciler_actions_total": _spec("counter", ("action",), "background"),
    "ssd_img2img_retention_deletions_total": _spec("counter", ("kind",), "background"),
    "ssd_img2img_jobs_queued": _spec("gauge", ("queue",), "background"),
    "ssd_img2img_jobs_processing": _spec("gauge", ("queue",), "background"),
    "ssd_img2img_oldest_queued_job_age_seconds": _spec("gauge", ("queue",), "background"),
}

# Label values the contract fixes (a query matching another value would match nothing).
LABEL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("ssd_img2img_build_info", "process"): frozenset(ALL_PROCESSES),
    ("ssd_img2img_dependency_errors_total", "dependency"): frozenset({"postgres", "redis", "s3"}),
    ("ssd_img2img_jobs_finished_total", "outcome"): frozenset({"completed", "failed", "cancelled"}),
    ("ssd_img2img_job_phase_seconds", "phase"): frozenset(
        {"load", "encode", "denoise", "decode", "upload"}
    ),
    ("ssd_img2img_webhook_attempts_total", "outcome"): frozenset({"delivered", "failed"}),
}

# prometheus_client's default collectors (every process that is not in multiprocess mode).
DEFAULT_PROCESS_METRICS: frozenset[str] = frozenset(
    {
        "process_start_time_seconds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
    }
)

# Labels Prometheus itself attaches to every scraped series (the scrape target's).
TARGET_LABELS: frozenset[str] = frozenset({"instance", "job"})

# Series Prometheus writes for every scrape target, whatever the target exports.
SCRAPE_SERIES: frozenset[str] = frozenset({"up", "scrape_duration_seconds"})


def series_names(name: str) -> tuple[str, ...]:
    """The series names a query may use for metric `name` of the contract."""
    if METRICS[name].type == "histogram":
        return tuple(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return (name,)


def metric_of_series(series: str) -> str | None:
    """The contract metric a series name belongs to, or None."""
    if series in METRICS:
        return series if METRICS[series].type != "histogram" else None
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        spec = METRICS.get(base)
        if base != series and spec is not None and spec.type == "histogram":
            return base
    return None


def labels_of_series(series: str) -> frozenset[str] | None:
    """The label names a series may carry (target labels included), or None when the
    series is neither in the contract nor one Prometheus or prometheus_client gives."""
    if series in DEFAULT_PROCESS_METRICS or series in SCRAPE_SERIES:
        return TARGET_LABELS
    metric = metric_of_series(series)
    if metric is None:
        return None
    extra = {"le"} if series.endswith("_bucket") else set()
    return METRICS[metric].labels | TARGET_LABELS | extra
