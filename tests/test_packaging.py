"""Deployment files: the compose stack validates against the Compose specification and
describes the same services as the local stack; the worker fails fast without a model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


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


@pytest.mark.parametrize("model_id", ["{tmp}/no-such-model", "segmind/SSD-1B"])
def test_worker_without_model_stops_with_instructions(tmp_path: Path, model_id: str) -> None:
    # HF_HUB_OFFLINE and an empty cache: the hub id cannot be loaded, and the test
    # never connects anywhere.
    env = {
        **os.environ,
        "MODEL_ID": model_id.format(tmp=tmp_path),
        "MODEL_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "MODEL_ID" in result.stderr
    assert "make-tiny" in result.stderr
