"""funding rates: funding_rates

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00.000000

The funding-rate history of USDT-M perpetuals (Binance's /fapi/v1/fundingRate), one row per symbol
and funding time: what backtests and paper sessions charge positions open across a funding time.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('funding_rates',
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('funding_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('funding_rate', sa.DOUBLE_PRECISION(), nullable=False),
    sa.Column('mark_price', sa.DOUBLE_PRECISION(), nullable=True),
    sa.PrimaryKeyConstraint('symbol', 'funding_time', name=op.f('pk_funding_rates'))
    )


def downgrade() -> None:
    op.drop_table('funding_rates')
