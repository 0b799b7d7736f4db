"""per-account bounds of open work in the API: image URL fetches, event streams and
v1 waits

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 09:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # NULL = the settings' defaults (DEFAULT_MAX_URL_FETCHES, DEFAULT_MAX_STREAMS).
    op.add_column('accounts', sa.Column('max_url_fetches', sa.Integer(), nullable=True))
    op.add_column('accounts', sa.Column('max_streams', sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f('ck_accounts_max_url_fetches_positive'), 'accounts', 'max_url_fetches > 0'
    )
    op.create_check_constraint(op.f('ck_accounts_max_streams_positive'), 'accounts', 'max_streams > 0')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_constraint(op.f('ck_accounts_max_streams_positive'), 'accounts', type_='check')
    op.drop_constraint(op.f('ck_accounts_max_url_fetches_positive'), 'accounts', type_='check')
    op.drop_column('accounts', 'max_streams')
    op.drop_column('accounts', 'max_url_fetches')
