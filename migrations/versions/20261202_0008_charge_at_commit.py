"""the fair order's charge for a claim is made at commit (a deferred trigger)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 06:00:00.000000

"""
import importlib.util
from pathlib import Path
from typing import Sequence, Union

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Entering the queue (and deleting a queued job) as in 0007, at once: an arriving job
# needs its number in line (`queue_seq`) before it is stored.
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
        INSERT INTO account_queues AS q (account_id, queue, pass, queued, queued_work, next_seq)
        VALUES (NEW.account_id, NEW.queue, vtime, 1, NEW.work, 1)
        ON CONFLICT (account_id, queue) DO UPDATE SET
            pass = CASE WHEN q.queued = 0 THEN greatest(q.pass, vtime) ELSE q.pass END,
            queued = q.queued + 1,
            queued_work = q.queued_work + EXCLUDED.queued_work,
            next_seq = q.next_seq + 1
        RETURNING q.next_seq INTO seq;
        -- A new place at the end of the account's line, except for a job put back in
        -- the queue it was in (its worker died): it keeps its place, first in line.
        IF TG_OP = 'INSERT' OR NEW.queue_seq IS NULL OR OLD.queue <> NEW.queue
                OR OLD.account_id <> NEW.account_id THEN
            NEW.queue_seq := seq;
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;
"""

# Leaving the queue by an UPDATE (a claim, a cancel, a move to another pool), counted
# when the transaction commits. A claim charges the account's pass with the job's work
# over its weight, which needs the account's row: taken at commit, that row lock is
# held for the commit alone instead of from the claim's UPDATE through the worker's
# next round trips. With fewer busy accounts than claiming workers, claims of one
# account then no longer queue behind each other for milliseconds at a time
# (docs/scheduling.md "Scale").
_TRACK_DEQUEUE = """
CREATE FUNCTION jobs_track_dequeue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE account_queues
    SET queued = queued - 1,
        queued_work = greatest(queued_work - OLD.work, 0),
        pass = pass + CASE
            WHEN NEW.status = 'PROCESSING'
            THEN OLD.work / coalesce(
                (SELECT scheduling_weight FROM accounts WHERE id = OLD.account_id), 1)
            ELSE 0 END
    WHERE account_id = OLD.account_id AND queue = OLD.queue;
    RETURN NULL;
END $$;
"""

_DEQUEUE_TRIGGER = """
CREATE CONSTRAINT TRIGGER jobs_track_dequeue AFTER UPDATE OF status, queue ON jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (OLD.status = 'QUEUED' AND (NEW.status <> 'QUEUED' OR NEW.queue <> OLD.queue))
    EXECUTE FUNCTION jobs_track_dequeue()
"""


def _function_of_0007() -> str:
    """jobs_track_queue as migration 0007 made it (one definition, kept there)."""
    path = Path(__file__).with_name("20261201_0007_scheduler.py")
    spec = importlib.util.spec_from_file_location("_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module._TRACK_QUEUE).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")


def upgrade() -> None:
    """Upgrade schema."""
    op.execute(_TRACK_QUEUE)
    op.execute(_TRACK_DEQUEUE)
    op.execute(_DEQUEUE_TRIGGER)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP TRIGGER jobs_track_dequeue ON jobs")
    op.execute("DROP FUNCTION jobs_track_dequeue()")
    op.execute(_function_of_0007())
