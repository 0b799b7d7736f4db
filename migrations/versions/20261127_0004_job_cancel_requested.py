"""job cancellation: jobs.cancel_requested_at

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 11:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # When the client asked to cancel; the worker of a PROCESSING job checks it.
    op.add_column(
        'jobs', sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column('jobs', 'cancel_requested_at')
