"""trading halts: trading_halts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 14:00:00.000000

Halts of live trading that survive restarts (a max-drawdown halt, the daily loss limit, flatten_and_halt):
in force from started_at until cleared_at (NULL: until cleared by hand).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('trading_halts',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False,
              comment='max_drawdown, daily_loss_limit, flatten_and_halt, ...'),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cleared_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_halts'))
    )
    op.create_index(op.f('ix_trading_halts_cleared_at'), 'trading_halts', ['cleared_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_trading_halts_cleared_at'), table_name='trading_halts')
    op.drop_table('trading_halts')
