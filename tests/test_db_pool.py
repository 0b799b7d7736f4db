"""The connection pool against a real PostgreSQL (common.db.ping_when_idle): a pooled
connection is checked before use only after being idle, and a dead one is replaced
without the session seeing an error."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from common.db import get_engine, ping_when_idle
from common.settings import get_settings


@pytest.fixture
def engine(services_env: tuple[Any, dict[str, str]]) -> Any:
    engine = create_engine(services_env[1]["DATABASE_URL"], poolclass=QueuePool, pool_size=1)
    ping_when_idle(engine, 0.5)
    yield engine
    engine.dispose()


def _count_pings(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    real = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(real(dbapi_connection))

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def test_a_connection_reused_at_once_is_not_pinged_one_idle_is(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(engine, monkeypatch)
    for _ in range(5):
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert pings == []  # a fresh connection, then reused within 0.5 s
    time.sleep(0.6)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert len(pings) == 1


def test_a_dead_idle_connection_is_replaced_without_an_error(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.connect() as conn:
        first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    # PostgreSQL ends that backend (as a restart would) while it sits in the pool.
    with create_engine(engine.url).connect() as admin:
        assert admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first}).scalar_one()
    pings = _count_pings(engine, monkeypatch)
    time.sleep(0.6)
    with engine.connect() as conn:
        second = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    assert second != first
    assert pings  # it was checked, found dead and replaced


def test_without_the_check_a_dead_connection_fails_its_statement(
    services_env: tuple[Any, dict[str, str]],
) -> None:
    """Control: the same dead connection, in a pool that does not check it, fails."""
    from sqlalchemy.exc import OperationalError

    bare = create_engine(services_env[1]["DATABASE_URL"], poolclass=QueuePool, pool_size=1)
    try:
        with bare.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with create_engine(bare.url).connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        time.sleep(0.6)
        with pytest.raises(OperationalError), bare.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        bare.dispose()


def test_errors_never_show_the_statements_values(
    services_env: tuple[Any, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's engine hides SQL parameters (prompts, key hashes) in its errors and
    logs: an error names the statement, never the values sent with it."""
    for name, value in services_env[1].items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    get_engine.cache_clear()
    try:
        with get_engine().connect() as conn, pytest.raises(DBAPIError) as failed:
            conn.execute(text("SELECT 1 / 0, CAST(:value AS text)"), {"value": "a-secret-prompt"})
    finally:
        get_engine.cache_clear()
        get_settings.cache_clear()
    assert "a-secret-prompt" not in str(failed.value)
    assert "hidden" in str(failed.value)
