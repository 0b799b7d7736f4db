"""Migrations and models agree, and the schema can go down and up again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from common.models import Base
from tests.support.reads import alembic_config


@pytest.fixture
def empty_db_url(services_env: tuple[object, dict[str, str]]) -> Iterator[str]:
    url = make_url(services_env[1]["DATABASE_URL"])
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS migration_check"))
        conn.execute(text("CREATE DATABASE migration_check"))
    yield url.set(database="migration_check").render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text("DROP DATABASE IF EXISTS migration_check WITH (FORCE)"))
    admin.dispose()


def _diff(url: str) -> list[object]:
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    return diff


def test_upgrade_matches_models_and_round_trips(empty_db_url: str) -> None:
    config = alembic_config(empty_db_url)
    command.upgrade(config, "heads")
    assert _diff(empty_db_url) == []

    command.downgrade(config, "base")
    engine = create_engine(empty_db_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()

    command.upgrade(config, "heads")
    assert _diff(empty_db_url) == []


def test_ledger_is_append_only(services_env: tuple[object, dict[str, str]]) -> None:
    engine = create_engine(services_env[1]["DATABASE_URL"])
    with engine.connect() as conn:
        account = conn.execute(
            text(
                "INSERT INTO accounts (id, name, balance, status)"
                " VALUES (gen_random_uuid(), 'a', 5, 'active') RETURNING id"
            )
        ).scalar_one()
        conn.execute(
            text("INSERT INTO credit_ledger (account_id, amount, reason) VALUES (:a, 5, 'grant')"),
            {"a": account},
        )
        conn.commit()
        for statement in ("UPDATE credit_ledger SET amount = 500", "DELETE FROM credit_ledger"):
            with pytest.raises(Exception, match="append-only"):
                conn.execute(text(statement))
            conn.rollback()
    engine.dispose()
