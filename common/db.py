"""Engine and session handling shared by the API, the worker and the CLI.

Services (the `*_service` functions) never commit: the request, task or command that
opened the session does, so one unit of work is one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from common.settings import get_settings


@lru_cache
def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    engine = create_engine(
        url or settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        # While PostgreSQL is down, fail fast (the API answers 503) instead of hanging:
        # a bounded connect, and a bounded wait for a pooled connection.
        pool_timeout=10,
        # Errors and logs show statements without their values (prompts, key hashes).
        hide_parameters=True,
        connect_args={"connect_timeout": 3},
    )
    ping_when_idle(engine, settings.database_ping_after_idle_seconds)
    return engine


def ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection with a `SELECT 1` before use when it has been idle
    for `idle_seconds` or more, and replace it if it is dead (the pool reconnects):
    a restart of PostgreSQL costs no failed request.

    Instead of `pool_pre_ping`, which pings at every checkout: one more round trip per
    transaction, on the hottest paths (a worker's claim, renewal and completion; every
    status poll) a quarter or more of all the statements sent (docs/scheduling.md
    "Scale"). A connection back in the pool within a second cannot have missed a
    restart of PostgreSQL, which takes longer; a dead one that slips through fails one
    statement and makes the pool drop every older connection.
    """

    def idle_from_now(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is not None and time.monotonic() - since < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool invalidates this connection and checks out a fresh one.
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc

    event.listen(engine, "connect", idle_from_now)  # a fresh connection needs no check
    event.listen(engine, "checkin", idle_from_now)
    event.listen(engine, "checkout", checked_out)


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
def autocommit_connection(url: str | None = None) -> Iterator[Connection]:
    """A pooled connection whose every statement is its own transaction, without an ORM
    session around it: for the hottest reads (a status poll), where the session's own
    bookkeeping costs as much CPU as the statement."""
    with get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


@contextmanager
def autocommit_session(url: str | None = None) -> Iterator[Session]:
    """A session whose every statement is its own transaction: no BEGIN and no COMMIT
    round trips. Only for work that is one statement (a lease renewal): two statements
    in it are two transactions."""
    with autocommit_connection(url) as conn, Session(bind=conn, expire_on_commit=False) as session:
        yield session


def ping(session: Session) -> None:
    """One round trip to the database (the health check): raises when it cannot answer."""
    session.execute(text("SELECT 1"))
