"""Several API processes on one host (uvicorn --workers N) with PROMETHEUS_MULTIPROC_DIR:
whichever of them answers a scrape serves the sum over all of them
(common/metrics.py `exposition`), and an in-flight gauge counts live processes only,
whether the others ended in order or were killed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# Three API processes count requests and hold one v1 wait each: the first ends in
# order (its lifespan's shutdown), the second is killed; a replacement starts (its
# lifespan's start) and answers the scrape, while the third is still up.
SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys

    def serve(requests, counted, end):
        from api.metrics import HTTP_REQUESTS, SYNC_WAITS
        from common import metrics
        SYNC_WAITS.inc()
        HTTP_REQUESTS.labels(method="GET", route="/v2/requests", status="200").inc(requests)
        counted.set()
        end.wait()
        metrics.leaving()

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        events = [(ctx.Event(), ctx.Event()) for _ in range(3)]
        processes = [
            ctx.Process(target=serve, args=(n, counted, end))
            for n, (counted, end) in zip((2, 3, 4), events)
        ]
        for process in processes:
            process.start()
        assert all(counted.wait(60) for counted, _ in events)
        events[0][1].set()
        processes[0].join(60)
        os.kill(processes[1].pid, signal.SIGKILL)
        processes[1].join(60)
        from common import metrics
        metrics.forget_dead_processes()
        sys.stdout.write(metrics.exposition().decode())
        processes[2].kill()
        processes[2].join()
    """
)


def test_a_scrape_sums_every_api_process(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    script = tmp_path / "two_apis.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(result.stdout)
        for sample in family.samples
    }
    labels = (("method", "GET"), ("route", "/v2/requests"), ("status", "200"))
    assert samples[("ssd_img2img_http_requests_total", labels)] == 9  # 2 + 3 + 4: all counted
    assert samples[("ssd_img2img_sync_waits_in_flight", ())] == 1  # the live one's only
