"""common/health.py, what /health/ready answers: each dependency checked within
HEALTH_CHECK_TIMEOUT_SECONDS, the schema at the head migration, and the kind of a
failure named without its detail (no URLs, no secrets)."""

from __future__ import annotations

import socket
import time

from alembic import command

from common import health
from common.settings import Settings
from devstack.ports import free_port
from tests.support.db import own_database
from tests.support.reads import alembic_config


def test_every_dependency_up_is_ready(services_env: tuple[object, dict[str, str]]) -> None:
    assert health.readiness(Settings()) == {"postgres": "ok", "redis": "ok", "s3": "ok"}


def test_a_dependency_down_is_named_without_its_address(
    services_env: tuple[object, dict[str, str]],
) -> None:
    closed = free_port()  # nothing listens there: refused at once
    settings = Settings(redis_url=f"redis://127.0.0.1:{closed}/0", s3_bucket="no-such-bucket")
    checks = health.readiness(settings)
    assert checks["postgres"] == "ok"
    assert checks["redis"].startswith("unreachable (") and str(closed) not in checks["redis"]
    assert checks["s3"].startswith("unreachable (")


def test_a_dependency_that_does_not_answer_is_down_within_the_timeout(
    services_env: tuple[object, dict[str, str]],
) -> None:
    # A listening socket that never accepts: the connection hangs instead of failing.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        port = silent.getsockname()[1]
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{port}/0", health_check_timeout_seconds=0.5
        )
        started = time.monotonic()
        checks = health.readiness(settings)
        elapsed = time.monotonic() - started
    assert checks["redis"] != "ok"
    # Bounded by the timeout, not by the dependency (generous for a loaded machine).
    assert elapsed < 10, elapsed


def test_a_schema_behind_the_code_is_not_ready(
    services_env: tuple[object, dict[str, str]],
) -> None:
    with own_database(services_env[1], "health_check") as env:
        command.downgrade(alembic_config(env["DATABASE_URL"]), "-1")
        problem = health.readiness(Settings())["postgres"]
    assert "run the migrations" in problem
    assert all(head in problem for head in health.head_revisions())
