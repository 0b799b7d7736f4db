"""Engine and session handling shared by the API, the worker and the CLI.

Services (the `*_service` functions) never commit: the request, task or command that
opened the session does, so one unit of work is one transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from common.settings import get_settings


@lru_cache
def get_engine(url: str | None = None) -> Engine:
    return create_engine(
        url or get_settings().database_url,
        pool_pre_ping=True,  # survive PostgreSQL restarts without a failed request
        pool_size=10,
        max_overflow=20,
        # While PostgreSQL is down, fail fast (the API answers 503) instead of hanging:
        # a bounded connect, and a bounded wait for a pooled connection.
        pool_timeout=10,
        connect_args={"connect_timeout": 3},
    )


@lru_cache
def get_session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: committed when the block ends normally, rolled back otherwise."""
    session = get_session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def autocommit_session(url: str | None = None) -> Iterator[Session]:
    """A session whose every statement is its own transaction: no BEGIN and no COMMIT
    round trips. Only for work that is one statement (a lease renewal): two statements
    in it are two transactions."""
    engine = get_engine(url)
    with (
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        Session(bind=conn, expire_on_commit=False) as session,
    ):
        yield session
