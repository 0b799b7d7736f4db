"""Several API processes on one host (uvicorn --workers N) with PROMETHEUS_MULTIPROC_DIR:
whichever of them answers a scrape serves the sum over all of them
(common/metrics.py `exposition`), and an in-flight gauge counts live processes only."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# Two processes count requests and hold one v1 wait each; the first then ends (as a
# uvicorn worker that is replaced) and the second prints its exposition.
SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from prometheus_client import multiprocess

    def serve(requests, done, hold):
        from api.metrics import HTTP_REQUESTS, SYNC_WAITS
        SYNC_WAITS.inc()
        for _ in range(requests):
            HTTP_REQUESTS.labels(method="GET", route="/v2/requests", status="200").inc()
        done.set()
        hold.wait()

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        first_done, second_done, hold, forever = (ctx.Event() for _ in range(4))
        first = ctx.Process(target=serve, args=(2, first_done, hold))
        second = ctx.Process(target=serve, args=(3, second_done, forever))
        first.start(); second.start()
        assert first_done.wait(60) and second_done.wait(60)
        hold.set(); first.join(60)
        multiprocess.mark_process_dead(first.pid)  # what a supervisor does for a dead worker
        from common.metrics import exposition
        sys.stdout.write(exposition().decode())
        second.kill(); second.join()
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
    assert samples[("ssd_img2img_http_requests_total", labels)] == 5  # 2 + 3
    assert samples[("ssd_img2img_sync_waits_in_flight", ())] == 1  # the live one's only
