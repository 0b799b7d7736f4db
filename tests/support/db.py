"""The database tier's unit of work: a session whose every write vanishes at the end.

Polar's pattern: the test's session is bound to a connection whose outer transaction
is rolled back when the test ends. The services commit as they would in a request (a
`session.commit()` here ends a SAVEPOINT, not the transaction), so a test of a service
runs on the real PostgreSQL and leaves nothing behind for the next one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from common.db import get_engine


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
