"""Settings that keep a deployment from starting unsafe: a short ADMIN_TOKEN, or a
secret published in this repository (outside ENVIRONMENT=development)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.settings import Settings, unsafe_test_settings
from devstack.process import log_path
from tests.support.live import Stack


@pytest.mark.e2e  # starts the API process
def test_a_short_admin_token_keeps_the_api_from_starting(tmp_path: Path) -> None:
    env = {**os.environ, "ADMIN_TOKEN": "x" * 31}
    started = subprocess.run(
        [sys.executable, "-c", "import api.main"],
        env=env,
        cwd=tmp_path,  # no .env file there
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode != 0
    assert "ADMIN_TOKEN must be at least 32 characters" in started.stderr


def test_admin_token_may_be_empty_or_long_enough() -> None:
    assert Settings(admin_token="").admin_token is not None  # empty: the admin API is off
    assert Settings(admin_token="x" * 32).admin_token is not None
    with pytest.raises(ValidationError, match="at least 32 characters") as refused:
        Settings(admin_token="short-secret-token")
    assert "short-secret-token" not in str(refused.value)  # errors never print secrets


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"s3_secret_access_key": "change-me-please"}, "S3_SECRET_ACCESS_KEY"),
        (
            {"database_url": "postgresql+psycopg://ssd:ssd@postgres:5432/ssd_img2img"},
            "DATABASE_URL (password)",
        ),
        ({"s3_secret_access_key": "minioadmin"}, "S3_SECRET_ACCESS_KEY"),
    ],
)
def test_published_default_secrets_are_refused_outside_development(
    settings: dict[str, str], named: str
) -> None:
    with pytest.raises(ValidationError, match="a published default secret") as refused:
        Settings(**settings)  # type: ignore[arg-type]
    assert named in str(refused.value)
    assert "change-me-please" not in str(refused.value)  # the value is never repeated
    assert Settings(environment="development", **settings).default_secrets() == [named]  # type: ignore[arg-type]


def test_own_secrets_are_accepted() -> None:
    own = Settings(
        s3_secret_access_key="kT9-own-random-value",
        database_url="postgresql+psycopg://ssd:kT9-own@postgres:5432/ssd_img2img",
    )
    assert own.default_secrets() == []


def test_test_only_settings_are_named() -> None:
    safe = Settings(allow_loopback_urls=False, result_retention_seconds=24 * 3600)
    assert unsafe_test_settings(safe) == []
    unsafe = unsafe_test_settings(Settings(allow_loopback_urls=True, result_retention_seconds=5))
    assert [what.split("=")[0] for what in unsafe] == [
        "ALLOW_LOOPBACK_URLS",
        "RESULT_RETENTION_SECONDS",
    ]


def test_every_process_warns_of_the_test_only_settings_it_runs_with(live_stack: Stack) -> None:
    """The test stack allows loopback URLs (its webhooks and image servers are local):
    the API, the GPU worker and the CPU worker each say so loudly at start."""
    for process in ("api", "worker", "background"):
        log = log_path(live_stack.state_dir, process).read_text()
        assert "TEST-ONLY SETTING IN FORCE, never in production: ALLOW_LOOPBACK_URLS" in log, (
            process
        )
