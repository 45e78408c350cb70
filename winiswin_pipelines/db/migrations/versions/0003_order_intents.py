"""order intents: the write-ahead record of live entry orders

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('order_intents',
    sa.Column('client_id', sa.String(length=36), nullable=False, comment='newClientOrderId of the entry'),
    sa.Column('trade_uid', sa.String(length=128), nullable=False),
    sa.Column('session_id', sa.String(length=128), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=False, comment='live (or paper)'),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('side', sa.String(length=5), nullable=False),
    sa.Column('quantity', sa.DOUBLE_PRECISION(), nullable=False, comment='quantity asked for'),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True,
              comment='what the session knew when it sent the entry: levels, reference price, signal'),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("side IN ('LONG', 'SHORT')", name=op.f('ck_order_intents_side_valid')),
    sa.CheckConstraint("status IN ('pending', 'filled', 'closed', 'rejected', 'unfilled')",
                       name=op.f('ck_order_intents_status_valid')),
    sa.PrimaryKeyConstraint('client_id', name=op.f('pk_order_intents')),
    sa.UniqueConstraint('trade_uid', name=op.f('uq_order_intents_trade_uid'))
    )
    op.create_index(op.f('ix_order_intents_mode_status'), 'order_intents', ['mode', 'status'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_order_intents_mode_status'), table_name='order_intents')
    op.drop_table('order_intents')
