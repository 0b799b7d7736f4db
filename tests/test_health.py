"""common/health.py, what /health/ready answers: each dependency checked within
HEALTH_CHECK_TIMEOUT_SECONDS, the schema at the head migration, and the kind of a
failure named without its detail (no URLs, no secrets)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import text

from common import health
from common.db import session_scope
from common.settings import Settings
from devstack.ports import free_port
from tests.support.db import own_database
from tests.support.reads import alembic_config


@pytest.fixture(autouse=True)
def fresh_answers() -> Iterator[None]:
    health.forget()  # each test's checks run, not an answer cached a second ago
    yield
    health.forget()


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


def test_dependencies_that_do_not_answer_are_down_within_one_timeout(
    services_env: tuple[object, dict[str, str]],
) -> None:
    # A listening socket that never accepts: every connection hangs instead of failing.
    timeout = 3.0
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(0)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        settings = Settings(
            database_url=f"postgresql+psycopg://postgres@{address}/x",
            redis_url=f"redis://{address}/0",
            s3_endpoint_url=f"http://{address}",
            health_check_timeout_seconds=timeout,
        )
        started = time.monotonic()
        checks = health.readiness(settings)
        elapsed = time.monotonic() - started
    assert all(state != "ok" for state in checks.values()), checks
    # One deadline for the three (one after another would take 3 × the timeout).
    assert elapsed < 2 * timeout, elapsed


def test_one_check_at_a_time_and_its_answer_reused_for_a_moment(
    services_env: tuple[object, dict[str, str]],
) -> None:
    settings = Settings()
    first = health.readiness(settings)
    assert health.readiness(settings) == first  # within _FRESH_SECONDS: the same answer
    health.forget()
    assert health.readiness(settings) == first  # checked again, on the same connection
    with session_scope() as session:
        connections = session.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": health.APPLICATION_NAME},
        ).scalar_one()
    assert connections == 1  # its pool of one, not one more per check


def test_a_schema_behind_the_code_is_not_ready_and_one_ahead_is(
    services_env: tuple[object, dict[str, str]],
) -> None:
    with own_database(services_env[1], "health_check") as env:
        command.downgrade(alembic_config(env["DATABASE_URL"]), "-1")
        behind = health.readiness(Settings())["postgres"]
        command.upgrade(alembic_config(env["DATABASE_URL"]), "heads")
        # A revision this code does not know: the next release migrated already, and
        # this (old) pod keeps serving through the roll.
        with session_scope() as session:
            session.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
        health.forget()
        ahead = health.readiness(Settings())["postgres"]
    assert "run the migrations" in behind
    assert all(head in behind for head in health.head_revisions())
    assert ahead == "ok"
