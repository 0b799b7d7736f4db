"""crash-safe jobs: worker leases, re-dispatch bookkeeping, idempotency keys

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 12:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_HAS_KEY = "idempotency_key IS NOT NULL"


def upgrade() -> None:
    """Upgrade schema."""
    # The lease of the worker running a PROCESSING job (common/jobs.py, common/reconcile.py).
    op.add_column('jobs', sa.Column('lease_owner', sa.String(length=200), nullable=True))
    op.add_column(
        'jobs', sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True)
    )
    # When the reconciler last sent the job's message again, and how many times it did.
    op.add_column('jobs', sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        'jobs',
        sa.Column('dispatch_count', sa.Integer(), server_default='0', nullable=False),
    )
    # Idempotency-Key of the submit that created the job, and the hash of its body.
    op.add_column('jobs', sa.Column('idempotency_key', sa.String(length=255), nullable=True))
    op.add_column('jobs', sa.Column('request_hash', sa.String(length=64), nullable=True))
    op.create_index(
        'uq_jobs_account_id_idempotency_key',
        'jobs',
        ['account_id', 'idempotency_key'],
        unique=True,
        postgresql_where=_HAS_KEY,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(
        'uq_jobs_account_id_idempotency_key', table_name='jobs', postgresql_where=_HAS_KEY
    )
    op.drop_column('jobs', 'request_hash')
    op.drop_column('jobs', 'idempotency_key')
    op.drop_column('jobs', 'dispatch_count')
    op.drop_column('jobs', 'dispatched_at')
    op.drop_column('jobs', 'lease_expires_at')
    op.drop_column('jobs', 'lease_owner')
