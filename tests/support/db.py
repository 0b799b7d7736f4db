"""The database tier's unit of work: a session whose every write vanishes at the end.

Polar's pattern: the test's session is bound to a connection whose outer transaction
is rolled back when the test ends. The services commit as they would in a request (a
`session.commit()` here ends a SAVEPOINT, not the transaction), so a test of a service
runs on the real PostgreSQL and leaves nothing behind for the next one."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from sqlalchemy.orm import Session

from common.db import get_engine, get_session_factory
from common.settings import get_settings


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


def forget_settings() -> None:
    """Drop the cached settings and engine: the next use reads os.environ again."""
    get_engine().dispose()  # its connections, before the cache lets go of it
    get_session_factory.cache_clear()
    get_engine.cache_clear()
    get_settings.cache_clear()
