"""What a job pays to get its scheduler: `make_scheduler` (a copy of one built before)
against building it from the model's config, per Segmind name, in the same process.

    .venv/bin/python bench/scheduler_build.py

Runs on the CPU with the tiny model's scheduler config (SDXL's, by worker/tiny_model.py);
the GPU does not take part in building a scheduler, so the figures hold on a GPU worker
too. The ratio is `build / make_scheduler`; the median of `--repeats` calls each.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.schedulers import SCHEDULERS, _build, make_scheduler
from worker.tiny_model import make_tiny_pipeline


def median_ms(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_pipeline(Path(tmp) / "model")
        config = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"machine: {platform.processor() or platform.machine()}, commit {commit}")
    print(f"{'scheduler':14s} {'build ms':>9s} {'copy ms':>8s} {'ratio':>7s}")
    for name, spec in SCHEDULERS.items():
        make_scheduler(name, config)  # the one built once
        built = median_ms(lambda spec=spec: _build(spec, config), args.repeats)
        copied = median_ms(lambda name=name: make_scheduler(name, config), args.repeats)
        print(f"{name:14s} {built:9.1f} {copied:8.2f} {built / copied:6.0f}×")


if __name__ == "__main__":
    main()
