"""result retention: jobs.expired_at and the sweep's index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_UNEXPIRED = "expired_at IS NULL AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')"


def upgrade() -> None:
    """Upgrade schema."""
    # Set when retention has deleted the job's objects; the row itself stays.
    op.add_column('jobs', sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        'ix_jobs_finished_at_unexpired',
        'jobs',
        ['finished_at'],
        unique=False,
        postgresql_where=_UNEXPIRED,
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(
        'ix_jobs_finished_at_unexpired', table_name='jobs', postgresql_where=_UNEXPIRED
    )
    op.drop_column('jobs', 'expired_at')
