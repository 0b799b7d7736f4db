"""per-account limits, in-flight index, ledger adjustments

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_REASONS_BEFORE = "'grant', 'job_debit', 'job_refund'"
_REASONS_AFTER = "'grant', 'job_debit', 'job_refund', 'adjustment'"


def upgrade() -> None:
    """Upgrade schema."""
    # NULL = the settings' defaults (DEFAULT_RATE_LIMIT_PER_MINUTE, DEFAULT_MAX_JOBS_IN_FLIGHT).
    op.add_column('accounts', sa.Column('rate_limit_per_minute', sa.Integer(), nullable=True))
    op.add_column('accounts', sa.Column('max_jobs_in_flight', sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f('ck_accounts_rate_limit_per_minute_positive'), 'accounts', 'rate_limit_per_minute > 0'
    )
    op.create_check_constraint(
        op.f('ck_accounts_max_jobs_in_flight_positive'), 'accounts', 'max_jobs_in_flight > 0'
    )
    op.create_index(
        'ix_jobs_account_id_in_flight',
        'jobs',
        ['account_id'],
        unique=False,
        postgresql_where="status IN ('QUEUED', 'PROCESSING')",
    )
    # The reason enum is VARCHAR + CHECK: a new value is a new constraint.
    op.drop_constraint(op.f('ck_credit_ledger_ledger_reason'), 'credit_ledger', type_='check')
    op.create_check_constraint(
        op.f('ck_credit_ledger_ledger_reason'), 'credit_ledger', f'reason IN ({_REASONS_AFTER})'
    )


def downgrade() -> None:
    """Downgrade schema. Refused by PostgreSQL while adjustment entries exist: the
    ledger is append-only, so they cannot be removed to make the old constraint hold."""
    op.drop_constraint(op.f('ck_credit_ledger_ledger_reason'), 'credit_ledger', type_='check')
    op.create_check_constraint(
        op.f('ck_credit_ledger_ledger_reason'), 'credit_ledger', f'reason IN ({_REASONS_BEFORE})'
    )
    op.drop_index(
        'ix_jobs_account_id_in_flight',
        table_name='jobs',
        postgresql_where="status IN ('QUEUED', 'PROCESSING')",
    )
    op.drop_constraint(op.f('ck_accounts_max_jobs_in_flight_positive'), 'accounts', type_='check')
    op.drop_constraint(op.f('ck_accounts_rate_limit_per_minute_positive'), 'accounts', type_='check')
    op.drop_column('accounts', 'max_jobs_in_flight')
    op.drop_column('accounts', 'rate_limit_per_minute')
