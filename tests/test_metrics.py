"""Metrics, health and request ids on the live stack: each process serves /metrics and
its health on its own port (METRICS_PORT), exports its part of the metric contract
(tests/support/metric_names.py), and the numbers move as a job runs."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

from common.db import session_scope
from common.jobs import fail
from common.models import JobStatus
from devstack.process import log_path
from tests.support.helpers import HELD_POOL, image_b64, insert_job, job_body
from tests.support.live import Stack
from tests.support.metric_names import METRICS
from tests.support.waiting import wait_until
from tests.support.webhook_receiver import webhook_receiver

Series = tuple[str, frozenset[tuple[str, str]]]
Samples = dict[Series, float]

# Exported only where NVML sees a GPU (worker/metrics.py): not on this CPU stack.
GPU_ONLY = {"ssd_img2img_gpu_memory_used_bytes", "ssd_img2img_gpu_utilization_ratio"}


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def exported(samples: Samples, metric: str) -> bool:
    kind = METRICS[metric].type
    wanted = {f"{metric}_count"} if kind == "histogram" else {metric}
    return bool(wanted & names(samples))


def test_each_process_serves_its_health_and_its_part_of_the_metric_contract(
    live_stack: Stack,
) -> None:
    assert httpx.get(f"{live_stack.api_url}/health/live").json() == {"status": "ok"}
    ready = httpx.get(f"{live_stack.api_url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "s3": "ok"}
    # Not on the public port: aggregate figures would tell a tenant about the others.
    assert httpx.get(f"{live_stack.api_url}/metrics").status_code == 404

    for process, url in live_stack.ops_urls.items():
        assert httpx.get(f"{url}/health/live").status_code == 200, process
        assert httpx.get(f"{url}/health/ready").status_code == 200, process
        samples = scrape(url)
        assert value(samples, "ssd_img2img_build_info", process=process, version="0.1.0") == 1
        assert "process_start_time_seconds" in names(samples), process
        for metric, spec in METRICS.items():
            if process in spec.processes and metric not in GPU_ONLY:
                assert exported(samples, metric), f"{process} does not export {metric}"
        # ... and nothing of another process's part.
        for metric, spec in METRICS.items():
            if process not in spec.processes:
                assert not exported(samples, metric), f"{process} exports {metric}"
    worker = scrape(live_stack.ops_urls["worker"])
    assert value(worker, "ssd_img2img_worker_ready") == 1


def _deltas(before: Samples, after: Samples) -> Mapping[Series, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after}


def test_the_numbers_move_as_a_job_runs(live_stack: Stack) -> None:
    account_id, key = live_stack.create_account(credits=1000, name="metrics")
    urls = live_stack.ops_urls
    before = {process: scrape(url) for process, url in urls.items()}

    with (
        webhook_receiver() as receiver,
        httpx.Client(base_url=live_stack.api_url, headers={"x-api-key": key}) as client,
    ):
        receiver.script("/done", 500)  # one failed attempt, then delivered
        body = job_body(
            image=image_b64(64, 64),
            strength=0.05,  # one step
            webhook_url=receiver.url("/done"),
            webhook_events_filter=["completed"],
        )
        answer = client.post("/v1/ssd-img2img", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        receiver.wait_for("/done", 2, timeout=60)
    cost = 20  # samples × num_inference_steps

    api = _deltas(before["api"], scrape(urls["api"]))
    route = "/v1/ssd-img2img"
    assert (
        api[
            (
                "ssd_img2img_http_requests_total",
                frozenset({"method": "POST", "route": route, "status": "200"}.items()),
            )
        ]
        == 1
    )
    assert (
        api[
            (
                "ssd_img2img_http_request_duration_seconds_count",
                frozenset({"method": "POST", "route": route}.items()),
            )
        ]
        == 1
    )
    assert api[("ssd_img2img_credits_charged_total", frozenset())] >= cost

    # The worker records the job on its recorder thread after the v1 answer may leave.
    def worker_counted() -> Mapping[Series, float]:
        return _deltas(before["worker"], scrape(urls["worker"]))

    wait_until(
        lambda: (
            worker_counted()[
                ("ssd_img2img_jobs_finished_total", frozenset({"outcome": "completed"}.items()))
            ]
            >= 1
        ),
        timeout=30,
        what="the worker's completed count",
    )
    worker = worker_counted()
    for phase in ("load", "encode", "denoise", "decode", "upload"):
        series = ("ssd_img2img_job_phase_seconds_count", frozenset({"phase": phase}.items()))
        assert worker[series] >= 1, phase
    for histogram in ("job_queue_wait_seconds", "batch_size", "denoise_steps_per_second"):
        assert worker[(f"ssd_img2img_{histogram}_count", frozenset())] >= 1, histogram

    # The webhook's attempts, counted once each is recorded (after its answer came).
    def background_counted() -> Mapping[Series, float]:
        return _deltas(before["background"], scrape(urls["background"]))

    def attempts(outcome: str) -> float:
        series = ("ssd_img2img_webhook_attempts_total", frozenset({"outcome": outcome}.items()))
        return background_counted().get(series, 0.0)

    wait_until(lambda: attempts("delivered") >= 1, timeout=30, what="the delivered attempt")
    assert attempts("failed") >= 1
    lag = ("ssd_img2img_webhook_delivery_lag_seconds_count", frozenset())
    assert background_counted()[lag] >= 1

    # The queue gauges, read from PostgreSQL at each scrape of the background worker.
    # Another test may have left jobs in that pool: compared with its count before.
    pool = frozenset({"queue": HELD_POOL}.items())
    queued = ("ssd_img2img_jobs_queued", pool)
    waiting_before = scrape(urls["background"]).get(queued, 0.0)
    held = insert_job(account_id, JobStatus.QUEUED)
    try:
        time.sleep(1.1)  # an age of a second at least
        background = scrape(urls["background"])
        assert background[queued] == waiting_before + 1
        assert background[("ssd_img2img_oldest_queued_job_age_seconds", pool)] >= 1
    finally:
        with session_scope() as session:
            fail(session, held, "ended by the metrics test")
    assert scrape(urls["background"]).get(queued, 0.0) == waiting_before


def test_a_request_id_is_kept_or_made_and_logged(live_stack: Stack) -> None:
    _, key = live_stack.create_account(credits=0, name="request-ids")
    headers = {"x-api-key": key}
    with httpx.Client(base_url=live_stack.api_url, headers=headers) as client:
        mine = client.get("/v2/requests", headers={"x-request-id": "trace-4f2a.abc"})
        made = client.get("/v2/requests")
        bad = client.get("/v2/requests", headers={"x-request-id": "with space"})
    assert mine.headers["x-request-id"] == "trace-4f2a.abc"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])  # replaced, not echoed
    assert made.headers["x-request-id"] != bad.headers["x-request-id"]

    # One line per request in the API's log, with its id and its caller's account.
    log = log_path(live_stack.state_dir, "api")
    wait_until(
        lambda: "request_id=trace-4f2a.abc" in log.read_text(),
        timeout=10,
        what="the request's log line",
    )
    line = next(x for x in log.read_text().splitlines() if "request_id=trace-4f2a.abc" in x)
    assert "GET /v2/requests 200" in line and "route=/v2/requests" in line
    assert "account_id=" in line
