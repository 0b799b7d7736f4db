"""each account's line keeps a lower bound of its head (account_queues.head_seq)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 18:00:00.000000

A claim reads the first queued jobs of an account's line through the partial index
`ix_jobs_queued_line`. The entries of jobs claimed before stay in that index until a
vacuum removes them, so between vacuums a busy account's claim walked thousands of dead
entries before its first live one (docs/scheduling.md "Scale"). `head_seq` lets the
claim start at the head instead.

The invariant: no QUEUED job of the line has a `queue_seq` below `head_seq`. Kept by
the triggers alone, under the line's row lock in `account_queues`:
- entering the queue lowers it to the job's place when needed (a job put back in line
  keeps its old place);
- leaving it by an UPDATE (jobs_track_dequeue, at commit) moves it up to the first job
  still queued. That look-up is a statement of its own, sent after the row is locked:
  it then sees every enqueue committed before the lock, and enqueues not yet committed
  hold the row and lower the bound after it;
- a DELETE leaves it where it is: still a lower bound.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_TRACK_QUEUE = """
CREATE OR REPLACE FUNCTION jobs_track_queue() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_queued boolean := TG_OP <> 'INSERT' AND OLD.status = 'QUEUED';
    is_queued boolean := TG_OP <> 'DELETE' AND NEW.status = 'QUEUED';
    vtime double precision;
    seq bigint;
BEGIN
    IF was_queued AND is_queued AND OLD.queue = NEW.queue
            AND OLD.account_id = NEW.account_id THEN
        RETURN NEW;
    END IF;
    IF was_queued AND TG_OP = 'DELETE' THEN
        UPDATE account_queues
        SET queued = queued - 1, queued_work = greatest(queued_work - OLD.work, 0)
        WHERE account_id = OLD.account_id AND queue = OLD.queue;
    END IF;
    -- An UPDATE leaving the queue is counted at commit: jobs_track_dequeue.
    IF is_queued THEN
        -- Entering the queue. An account that had nothing queued starts at the
        -- queue's virtual time (the least pass of the accounts with queued work, or
        -- the greatest pass when none has any): no credit saved up while idle, no
        -- debt older than one job.
        vtime := coalesce(
            (SELECT pass FROM account_queues
             WHERE queue = NEW.queue AND queued > 0 ORDER BY pass LIMIT 1),
            (SELECT max(pass) FROM account_queues WHERE queue = NEW.queue),
            0);
        -- An empty line's head is the new place; otherwise the head stays first.
        INSERT INTO account_queues AS q
            (account_id, queue, pass, queued, queued_work, next_seq, head_seq)
        VALUES (NEW.account_id, NEW.queue, vtime, 1, NEW.work, 1, 1)
        ON CONFLICT (account_id, queue) DO UPDATE SET
            pass = CASE WHEN q.queued = 0 THEN greatest(q.pass, vtime) ELSE q.pass END,
            queued = q.queued + 1,
            queued_work = q.queued_work + EXCLUDED.queued_work,
            next_seq = q.next_seq + 1,
            head_seq = CASE WHEN q.queued = 0 THEN q.next_seq + 1 ELSE q.head_seq END
        RETURNING q.next_seq INTO seq;
        -- A new place at the end of the account's line, except for a job put back in
        -- the queue it was in (its worker died): it keeps its place, first in line.
        IF TG_OP = 'INSERT' OR NEW.queue_seq IS NULL OR OLD.queue <> NEW.queue
                OR OLD.account_id <> NEW.account_id THEN
            NEW.queue_seq := seq;
        ELSE
            UPDATE account_queues SET head_seq = least(head_seq, NEW.queue_seq)
            WHERE account_id = NEW.account_id AND queue = NEW.queue;
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;
"""

_TRACK_DEQUEUE = """
CREATE OR REPLACE FUNCTION jobs_track_dequeue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The row first: the UPDATE's snapshot, taken after, then sees every enqueue
    -- committed before, and those still running wait for the row (this migration's
    -- docstring). A lock, not a second UPDATE: one new row version per dequeue.
    PERFORM 1 FROM account_queues
    WHERE account_id = OLD.account_id AND queue = OLD.queue FOR UPDATE;
    UPDATE account_queues AS q
    SET queued = queued - 1,
        queued_work = greatest(queued_work - OLD.work, 0),
        pass = pass + CASE
            WHEN NEW.status = 'PROCESSING'
            THEN OLD.work / coalesce(
                (SELECT scheduling_weight FROM accounts WHERE id = OLD.account_id), 1)
            ELSE 0 END,
        head_seq = coalesce(
            (SELECT j.queue_seq FROM jobs AS j
             WHERE j.account_id = q.account_id AND j.queue = q.queue
               AND j.status = 'QUEUED' AND j.queue_seq >= q.head_seq
             ORDER BY j.queue_seq LIMIT 1),
            q.next_seq + 1)
    WHERE account_id = OLD.account_id AND queue = OLD.queue;
    RETURN NULL;
END $$;
"""

_BACKFILL = """
UPDATE account_queues AS q
SET head_seq = coalesce(
    (SELECT min(j.queue_seq) FROM jobs AS j
     WHERE j.account_id = q.account_id AND j.queue = q.queue AND j.status = 'QUEUED'),
    q.next_seq + 1)
"""


def _function_of(filename: str, name: str) -> str:
    """A function's definition as an earlier migration made it (kept there only)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(getattr(module, name)).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        'account_queues',
        sa.Column('head_seq', sa.BigInteger(), server_default='1', nullable=False),
    )
    op.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
    op.execute(_BACKFILL)
    op.execute(_TRACK_QUEUE)
    op.execute(_TRACK_DEQUEUE)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute(_function_of("20261202_0008_charge_at_commit.py", "_TRACK_QUEUE"))
    op.execute(_function_of("20261202_0008_charge_at_commit.py", "_TRACK_DEQUEUE"))
    op.drop_column('account_queues', 'head_seq')
