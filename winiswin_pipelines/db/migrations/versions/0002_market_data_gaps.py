"""market data gaps and capture heartbeats

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('market_data_gaps',
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('start_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('capture_id', sa.String(length=128), nullable=True, comment='the capture that saw the gap open'),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("reason IN ('restart', 'reconnect', 'sequence_break', 'snapshot_resync')",
                       name=op.f('ck_market_data_gaps_reason_valid')),
    sa.CheckConstraint('end_time IS NULL OR end_time >= start_time',
                       name=op.f('ck_market_data_gaps_end_not_before_start')),
    sa.PrimaryKeyConstraint('symbol', 'start_time', name=op.f('pk_market_data_gaps'))
    )
    op.create_index(op.f('ix_market_data_gaps_start_time'), 'market_data_gaps', ['start_time'], unique=False)
    op.create_table('market_data_captures',
    sa.Column('capture_id', sa.String(length=128), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False, comment='running, or how it ended'),
    sa.Column('symbols', postgresql.ARRAY(sa.String(length=32)), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_message_at', sa.DateTime(timezone=True), nullable=True, comment='local receive time'),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('messages', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('book_rows', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('kline_rows', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('gaps', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.PrimaryKeyConstraint('capture_id', name=op.f('pk_market_data_captures'))
    )


def downgrade() -> None:
    op.drop_table('market_data_captures')
    op.drop_index(op.f('ix_market_data_gaps_start_time'), table_name='market_data_gaps')
    op.drop_table('market_data_gaps')
