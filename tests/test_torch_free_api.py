"""The API never loads torch or diffusers: not on import, not while serving."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.process import pidfile_path, read_pidfile
from tests.support.helpers import job_body
from tests.support.live import ROOT, Stack

HEAVY = ("torch", "diffusers", "transformers", "worker")

# Serves a whole submit (key, image check, S3, PostgreSQL, the wake-up) and its status.
CHECK = """
import os, sys
from fastapi.testclient import TestClient
import api.main
headers = {{"x-api-key": os.environ["CHECK_API_KEY"]}}
with TestClient(api.main.app) as client:
    assert client.get("/health").status_code == 200
    submitted = client.post("/v2/ssd-img2img", json={body!r}, headers=headers)
    assert submitted.status_code == 200, submitted.text
    status = client.get(submitted.json()["status_url"], headers=headers)
    assert status.status_code == 200, status.text
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(",".join(loaded))
"""


def test_import_and_serve_without_torch(live_stack: Stack) -> None:
    _, api_key = live_stack.create_account(credits=1000, name="torch-free")
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(heavy=set(HEAVY), body=job_body())],
        env={**os.environ, **live_stack.env, "CHECK_API_KEY": api_key},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_running_api_process_maps_no_torch_library(live_stack: Stack) -> None:
    pid = read_pidfile(pidfile_path(live_stack.state_dir, "api"))
    assert pid is not None
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "libtorch" not in maps
    assert "/torch/" not in maps
    # The worker process, by contrast, does map torch: the check can tell them apart.
    worker_pid = read_pidfile(pidfile_path(live_stack.state_dir, "worker"))
    assert worker_pid is not None
    assert "libtorch" in Path(f"/proc/{worker_pid}/maps").read_text()
