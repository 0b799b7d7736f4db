"""Deployment files: the compose stack validates against the Compose specification and
describes the same services as the local stack; the worker fails fast without a model."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from tests.support.live import ROOT


def test_compose_file_is_valid() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_describes_the_stack() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "s3", "migrate", "api", "background", "worker"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]
    assert "alembic upgrade head" in " ".join(services["migrate"]["command"])


def test_compose_has_no_default_secrets_and_publishes_only_the_api_widely() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in ("POSTGRES_PASSWORD", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        assert "${" + name + ":?" in text, name  # required: compose stops without it
        assert not re.search(r"\$\{" + name + r":?-", text), name  # no default
    assert "${ADMIN_TOKEN:-}" in text  # empty by default: the admin API is off
    services = yaml.safe_load(text)["services"]
    assert "ports" not in services["postgres"] and "ports" not in services["redis"]
    assert services["s3"]["ports"] == ["${S3_PUBLISH_ADDRESS:-127.0.0.1}:8333:8333"]
    example = (ROOT / ".env.example").read_text()
    for name in ("POSTGRES_PASSWORD", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "ADMIN_TOKEN"):
        assert f"\n{name}=\n" in example, name  # listed, and left for the operator to fill


def _pinned(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_torch_is_one_version_everywhere() -> None:
    """constraints.txt pins torch; the CPU install (Makefile, this venv) and the GPU worker
    image both take that version, and it meets what pyproject asks of it."""
    pinned = _pinned("torch")
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH_SPEC ?= $(shell grep '^torch==' constraints.txt)" in makefile
    installed = importlib.metadata.version("torch")
    assert Version(installed).public == pinned, (installed, pinned)  # e.g. 2.13.0+cpu
    dockerfile = (ROOT / "infra" / "worker.Dockerfile").read_text()
    torch_install = next(line for line in dockerfile.splitlines() if "grep '^torch=='" in line)
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_install
    assert re.search(r"ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", dockerfile)
    assert "pip install -c constraints.txt '.[worker]'" in dockerfile
    assert not re.search(r"^FROM .*pytorch", dockerfile, re.MULTILINE)  # no second torch
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in map(Requirement, project["project"]["optional-dependencies"]["worker"]):
        if requirement.name in {"torch", "diffusers", "transformers"}:
            version = _pinned(requirement.name)
            assert requirement.specifier.contains(version), (requirement, version)
    floor = next(
        Requirement(r)
        for r in project["project"]["optional-dependencies"]["worker"]
        if r.startswith("torch")
    )
    assert not floor.specifier.contains("2.5.1")  # below what transformers 5 runs with


# The worker's own entry point, as `python -m worker` runs it, saying whether torch got
# imported before it stopped.
WORKER_PROBE = (
    "import sys\n"
    "from worker.__main__ import main\n"
    "code = main([])\n"
    "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
    "sys.exit(code)\n"
)


@pytest.mark.e2e  # starts the worker process
@pytest.mark.parametrize("model_id", ["{tmp}/no-such-model", "segmind/SSD-1B"])
def test_worker_without_model_stops_with_instructions(tmp_path: Path, model_id: str) -> None:
    """It stops with what to set, and before importing torch and diffusers
    (worker/model_source.py): the 15-20 s of CPU they cost are not spent on a worker
    that stops. HF_HUB_OFFLINE and an empty cache: the hub id cannot be loaded, and the
    test never connects anywhere."""
    env = {
        **os.environ,
        "MODEL_ID": model_id.format(tmp=tmp_path),
        "MODEL_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = subprocess.run(
        [sys.executable, "-c", WORKER_PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "MODEL_ID" in result.stderr
    assert "make-tiny" in result.stderr
    assert result.stdout.strip() == "no torch"
