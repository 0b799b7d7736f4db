"""The database tier's unit of work: a session whose every write vanishes at the end.

Polar's pattern: the test's session is bound to a connection whose outer transaction
is rolled back when the test ends. The services commit as they would in a request (a
`session.commit()` here ends a SAVEPOINT, not the transaction), so a test of a service
runs on the real PostgreSQL and leaves nothing behind for the next one."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from common.db import get_engine, get_session_factory
from common.settings import get_settings
from tests.support.reads import alembic_config


@contextmanager
def rolled_back_session() -> Iterator[Session]:
    with get_engine().connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


@contextmanager
def settings_from(env: Mapping[str, str]) -> Iterator[None]:
    """This process's settings, and the engine built from them, read from `env` for the
    block: a service called in-process then runs against another database or with other
    settings, as a process started with `env` would."""
    saved = dict(os.environ)
    os.environ.update(env)
    forget_settings()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        forget_settings()


@contextmanager
def own_database(env: Mapping[str, str], name: str) -> Iterator[dict[str, str]]:
    """`env` with a fresh, migrated database `name` on the same PostgreSQL, and this
    process's settings read from it for the block (`settings_from`); dropped after.

    For tests that count or scan the whole database (a reconciler sweep, a plan's buffer
    counts): in the shared one, other tests' rows are in their figures."""
    url = make_url(env["DATABASE_URL"])
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    drop = text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    try:
        with admin.connect() as conn:
            conn.execute(drop)
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        db_url = url.set(database=name).render_as_string(hide_password=False)
        command.upgrade(alembic_config(db_url), "heads")
        own = {**env, "DATABASE_URL": db_url}
        with settings_from(own):
            yield own
        with admin.connect() as conn:
            conn.execute(drop)
    finally:
        admin.dispose()


def forget_settings() -> None:
    """Drop the cached settings and engine: the next use reads os.environ again."""
    get_engine().dispose()  # its connections, before the cache lets go of it
    get_session_factory.cache_clear()
    get_engine.cache_clear()
    get_settings.cache_clear()
