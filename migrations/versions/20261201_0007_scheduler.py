"""the scheduler: PostgreSQL is the queue of record (fair order, batching)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 12:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_QUEUED = "status = 'QUEUED'"
_ACTIVE = "queued > 0"
# Kept in step with common/models.py (BATCH_KEY_SQL): jobs sharing it can share one
# pipeline call (docs/scheduling.md "Batching").
_BATCH_KEY = (
    "(params ->> 'width') || 'x' || (params ->> 'height') || '|' || (params ->> 'scheduler')"
    " || '|' || (params ->> 'num_inference_steps') || '|' || (params ->> 'strength')"
    " || '|' || (params ->> 'guidance_scale')"
)

# The queue bookkeeping of common/scheduler.py, kept by PostgreSQL itself so that every
# path that moves a job in or out of QUEUED (submit, claim, cancel, fail, the
# reconciler's requeue, an operator's SQL) keeps it right. See docs/scheduling.md.
_TRACK_QUEUE = """
CREATE FUNCTION jobs_track_queue() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF was_queued THEN
        -- Leaving the queue. A claim (-> PROCESSING) charges the account's pass with
        -- the job's work over its weight: the fair order's virtual time.
        UPDATE account_queues
        SET queued = queued - 1,
            queued_work = greatest(queued_work - OLD.work, 0),
            pass = pass + CASE
                WHEN TG_OP = 'UPDATE' AND NEW.status = 'PROCESSING'
                THEN OLD.work / coalesce(
                    (SELECT scheduling_weight FROM accounts WHERE id = OLD.account_id), 1)
                ELSE 0 END
        WHERE account_id = OLD.account_id AND queue = OLD.queue;
    END IF;
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


def upgrade() -> None:
    """Upgrade schema."""
    # Per-account weight in the fair order; NULL = 1.
    op.add_column('accounts', sa.Column('scheduling_weight', sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f('ck_accounts_scheduling_weight_positive'), 'accounts', 'scheduling_weight > 0'
    )
    # The worker pool (GPU_QUEUE) a job runs on; its place in its account's line; its
    # estimated GPU work; what it may share a pipeline call with.
    op.add_column(
        'jobs', sa.Column('queue', sa.String(length=64), server_default='gpu', nullable=False)
    )
    op.add_column('jobs', sa.Column('queue_seq', sa.BigInteger(), nullable=True))
    op.add_column('jobs', sa.Column('work', sa.Float(), server_default='1', nullable=False))
    op.add_column(
        'jobs',
        sa.Column(
            'batch_key', sa.Text(), sa.Computed(_BATCH_KEY, persisted=True), nullable=True
        ),
    )
    op.create_table(
        'account_queues',
        sa.Column('account_id', sa.UUID(), nullable=False),
        sa.Column('queue', sa.String(length=64), nullable=False),
        sa.Column('pass', sa.Float(), server_default='0', nullable=False),
        sa.Column('queued', sa.Integer(), server_default='0', nullable=False),
        sa.Column('queued_work', sa.Float(), server_default='0', nullable=False),
        sa.Column('next_seq', sa.BigInteger(), server_default='0', nullable=False),
        sa.ForeignKeyConstraint(
            ['account_id'],
            ['accounts.id'],
            name=op.f('fk_account_queues_account_id_accounts'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('account_id', 'queue', name=op.f('pk_account_queues')),
    )
    op.create_index(
        'ix_account_queues_queue_pass_active',
        'account_queues',
        ['queue', 'pass', 'account_id'],
        unique=False,
        postgresql_where=_ACTIVE,
    )
    op.create_index(
        'ix_jobs_queued_line',
        'jobs',
        ['account_id', 'queue', 'queue_seq'],
        unique=False,
        postgresql_include=['batch_key', 'work'],
        postgresql_where=_QUEUED,
    )
    # Jobs already queued: numbered in their arrival order, counted per account.
    op.execute(
        """
        UPDATE jobs SET queue_seq = ranked.seq
        FROM (SELECT id, row_number() OVER (PARTITION BY account_id ORDER BY created_at, id)
              AS seq FROM jobs WHERE status = 'QUEUED') AS ranked
        WHERE jobs.id = ranked.id
        """
    )
    op.execute(
        """
        INSERT INTO account_queues (account_id, queue, pass, queued, queued_work, next_seq)
        SELECT account_id, queue, 0, count(*), sum(work), max(queue_seq)
        FROM jobs WHERE status = 'QUEUED' GROUP BY account_id, queue
        """
    )
    op.execute(_TRACK_QUEUE)
    op.execute(
        "CREATE TRIGGER jobs_track_queue BEFORE INSERT OR DELETE OR UPDATE OF status, queue "
        "ON jobs FOR EACH ROW EXECUTE FUNCTION jobs_track_queue()"
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP TRIGGER jobs_track_queue ON jobs")
    op.execute("DROP FUNCTION jobs_track_queue()")
    op.drop_index('ix_jobs_queued_line', table_name='jobs', postgresql_where=_QUEUED)
    op.drop_index(
        'ix_account_queues_queue_pass_active',
        table_name='account_queues',
        postgresql_where=_ACTIVE,
    )
    op.drop_table('account_queues')
    op.drop_column('jobs', 'batch_key')
    op.drop_column('jobs', 'work')
    op.drop_column('jobs', 'queue_seq')
    op.drop_column('jobs', 'queue')
    op.drop_constraint(op.f('ck_accounts_scheduling_weight_positive'), 'accounts', type_='check')
    op.drop_column('accounts', 'scheduling_weight')
