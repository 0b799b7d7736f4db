"""fair webhook delivery: attempts in flight per delivery, and each endpoint's run of
failures (pause, automatic disabling)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 10:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # Set while an attempt runs (until its claim expires): attempts in flight per account
    # and per endpoint are counted from it (common/webhooks/delivery.py).
    op.add_column(
        'webhook_deliveries',
        sa.Column('in_attempt_until', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        'ix_webhook_deliveries_account_id_in_attempt',
        'webhook_deliveries',
        ['account_id'],
        postgresql_where='in_attempt_until IS NOT NULL',
    )
    op.create_index(
        'ix_webhook_deliveries_endpoint_id_in_attempt',
        'webhook_deliveries',
        ['endpoint_id'],
        postgresql_where='in_attempt_until IS NOT NULL',
    )
    op.add_column(
        'webhook_endpoints',
        sa.Column('consecutive_failures', sa.Integer(), server_default='0', nullable=False),
    )
    op.add_column(
        'webhook_endpoints', sa.Column('failing_since', sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        'webhook_endpoints', sa.Column('paused_until', sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column('webhook_endpoints', 'paused_until')
    op.drop_column('webhook_endpoints', 'failing_since')
    op.drop_column('webhook_endpoints', 'consecutive_failures')
    op.drop_index(
        'ix_webhook_deliveries_endpoint_id_in_attempt',
        table_name='webhook_deliveries',
        postgresql_where='in_attempt_until IS NOT NULL',
    )
    op.drop_index(
        'ix_webhook_deliveries_account_id_in_attempt',
        table_name='webhook_deliveries',
        postgresql_where='in_attempt_until IS NOT NULL',
    )
    op.drop_column('webhook_deliveries', 'in_attempt_until')
