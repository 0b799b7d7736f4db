"""bench/gpu.py end to end on the CPU with the tiny model (its GPU run is the same code
on a full-size model): every phase prints its JSON lines, the optimised and the plain
pipeline do the same work, and the service path runs through the live stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.live import Stack

pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


def test_the_gpu_bench_runs_every_phase_on_a_cpu(
    live_stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import gpu  # torch and diffusers: imported where it runs

    _, key = live_stack.create_account(credits=100_000, name="bench-gpu")
    gpu.main(
        [
            *("--device", "cpu", "--model", "tiny", "--model-dir", str(tmp_path)),
            *("--sizes", "64", "--steps", "20", "--strength", "0.1", "--jobs", "2"),
            *("--repeats", "1", "--api-url", live_stack.api_url, "--api-key", key),
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_phase: dict[str, list[dict]] = {}
    for line in lines:
        by_phase.setdefault(line["phase"], []).append(line)
    assert [row["batch"] for row in by_phase["a"]] == [1, 2, 4, 8]
    assert all(row["images_per_s"] > 0 for row in by_phase["a"])
    checks = [row for row in by_phase["b"] if row.get("check") == "same work"]
    assert [row["scheduler"] for row in checks] == ["DPM2 Karras", "Euler"]
    assert all(row["ok"] for row in checks)
    (service,) = by_phase["c"]
    assert service["jobs"] == 2 and service["ratio"] > 0
    assert 0 <= service["gpu_idle_fraction"] < 1
    assert "api_key" not in by_phase["setup"][0]["args"]  # the key is never printed
    assert by_phase["done"]
