"""Job transitions on the hot path, against PostgreSQL: they find their jobs by primary
key whatever the statistics say (common.jobs.in_state), and a webhook that cannot be
recorded does not hold a transition back.

Transitions of jobs named by id find them by primary key, whatever PostgreSQL's
statistics say about job states. Tried as the statements are
sent: each UPDATE a transition sends is recorded and EXPLAINed with its parameters,
after an ANALYZE that saw almost no job PROCESSING, the statistics under which a plain
`status = 'PROCESSING'` is answered from an index on status."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from common import jobs, leases
from common.db import get_engine, session_scope
from common.models import JobStatus
from tests.support.helpers import insert_account, insert_job

OWNER = "plan-test-worker"


@contextmanager
def _sent_updates() -> Iterator[list[tuple[str, Any]]]:
    """The `UPDATE jobs` statements sent meanwhile, with their parameters."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("UPDATE jobs"):
            sent.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", record)  # every engine: the sessions'
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def _indexes(statement: str, parameters: Any) -> set[str]:
    """The indexes (and "Seq Scan") the plan of `statement` reads."""
    with get_engine().connect() as conn:
        raw = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar_one()
        conn.rollback()
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            found.add(node["Index Name"])
        if node.get("Node Type") == "Seq Scan":
            found.add("Seq Scan")
        for child in node.get("Plans", []):
            walk(child)

    walk((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])
    return found


def _processing(account: str) -> uuid.UUID:
    job_id = insert_job(account, JobStatus.QUEUED)
    with session_scope() as session:
        assert jobs.start(session, [job_id], OWNER, 60)
    return job_id


def test_transitions_by_id_read_the_primary_key_only(services_env: object) -> None:
    account = str(insert_account("plans"))
    # Statistics taken while hardly any job is PROCESSING (a fleet idle at ANALYZE).
    for _ in range(300):
        insert_job(account, JobStatus.COMPLETED)
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE jobs"))
    control = _indexes(
        "UPDATE jobs SET updated_at = now() WHERE id = %(id)s AND status = 'PROCESSING'",
        {"id": uuid.uuid4()},
    )
    # Under these statistics a plain status test is answered from an index on status
    # (the status index, or a partial index whose predicate names the status), not
    # from the primary key: the trap in_state avoids.
    assert "pk_jobs" not in control, control

    queued = insert_job(account, JobStatus.QUEUED)
    renewed, completed, failed = (_processing(account) for _ in range(3))
    steps: list[Callable[[Session], Any]] = [
        lambda s: jobs.start(s, [queued], OWNER, 60),
        lambda s: leases.renew_all(s, [renewed], OWNER, 60),
        lambda s: jobs.complete(s, completed, [], {}, lease_owner=OWNER),
        lambda s: jobs.fail(s, failed, "boom", lease_owner=OWNER),
    ]
    with session_scope() as session:
        on_jobs = set(
            session.execute(
                text("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'")
            ).scalars()
        )
    for step in steps:
        with _sent_updates() as sent, session_scope() as session:
            step(session)
        assert sent, "the transition sent no UPDATE"
        for statement, parameters in sent:
            # (The RETURNING's look-up of the account's webhook endpoints uses theirs.)
            assert _indexes(statement, parameters) & on_jobs == {"pk_jobs"}, statement


def test_a_webhook_that_cannot_be_recorded_does_not_hold_the_job_back(
    services_env: object, monkeypatch: Any
) -> None:
    """The deliveries are written in a savepoint: when that write fails, the job's own
    transition still commits (a job stuck PROCESSING is worse than a lost webhook)."""
    from common.webhooks import events

    def broken_insert(session: Session, *args: Any) -> list[uuid.UUID]:
        session.execute(text("INSERT INTO no_such_table VALUES (1)"))  # aborts the savepoint
        return []

    monkeypatch.setattr(events, "_insert_deliveries", broken_insert)
    account = str(insert_account("plans"))
    job_id = insert_job(account, JobStatus.QUEUED, webhook_url="https://hooks.example.com/x")
    with session_scope() as session:
        assert jobs.start(session, [job_id], OWNER, 60)
    with session_scope() as session:
        assert jobs.complete(session, job_id, [], {}, lease_owner=OWNER)
    with session_scope() as session:
        status, deliveries = session.execute(
            text(
                "SELECT status, (SELECT count(*) FROM webhook_deliveries WHERE job_id = :id) "
                "FROM jobs WHERE id = :id"
            ),
            {"id": job_id},
        ).one()
    assert (status, deliveries) == ("COMPLETED", 0)
