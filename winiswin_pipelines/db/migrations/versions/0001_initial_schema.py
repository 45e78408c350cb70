"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 10:41:29.069475
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('archive_manifest',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('table_name', sa.String(length=64), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('uri', sa.Text(), nullable=True),
    sa.Column('object_uris', postgresql.ARRAY(sa.Text()), nullable=True),
    sa.Column('rows', sa.BigInteger(), nullable=True),
    sa.Column('bytes', sa.BigInteger(), nullable=True),
    sa.Column('checksum', sa.String(length=128), nullable=True),
    sa.Column('fingerprint', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_archive_manifest')),
    sa.UniqueConstraint('table_name', 'day', name=op.f('uq_archive_manifest_table_name_day'))
    )
    op.create_index(op.f('ix_archive_manifest_status'), 'archive_manifest', ['status'], unique=False)
    op.create_table('book_snapshots',
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('exchange_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('receive_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_update_id', sa.BigInteger(), nullable=False),
    sa.Column('best_bid', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('best_bid_qty', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('best_ask', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('best_ask_qty', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('bid_prices', postgresql.ARRAY(sa.DOUBLE_PRECISION()), nullable=True),
    sa.Column('bid_sizes', postgresql.ARRAY(sa.DOUBLE_PRECISION()), nullable=True),
    sa.Column('ask_prices', postgresql.ARRAY(sa.DOUBLE_PRECISION()), nullable=True),
    sa.Column('ask_sizes', postgresql.ARRAY(sa.DOUBLE_PRECISION()), nullable=True),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('symbol', 'exchange_time', name=op.f('pk_book_snapshots')),
    postgresql_partition_by='RANGE (exchange_time)'
    )
    op.create_table('klines',
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('interval', sa.String(length=8), nullable=False),
    sa.Column('open_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('close_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('open', sa.DOUBLE_PRECISION(), nullable=False),
    sa.Column('high', sa.DOUBLE_PRECISION(), nullable=False),
    sa.Column('low', sa.DOUBLE_PRECISION(), nullable=False),
    sa.Column('close', sa.DOUBLE_PRECISION(), nullable=False),
    sa.Column('volume', sa.DOUBLE_PRECISION(), nullable=False),
    sa.Column('quote_volume', sa.DOUBLE_PRECISION(), nullable=False),
    sa.Column('trade_count', sa.BigInteger(), nullable=False),
    sa.Column('taker_buy_base_volume', sa.DOUBLE_PRECISION(), nullable=False),
    sa.Column('taker_buy_quote_volume', sa.DOUBLE_PRECISION(), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('symbol', 'interval', 'open_time', name=op.f('pk_klines')),
    postgresql_partition_by='RANGE (open_time)'
    )
    op.create_table('legacy_quarantine',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('position', sa.String(length=64), nullable=False, comment='line number or row id'),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('raw_text', sa.Text(), nullable=True),
    sa.Column('variant', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_legacy_quarantine')),
    sa.UniqueConstraint('source', 'position', name=op.f('uq_legacy_quarantine_source_position'))
    )
    op.create_table('position_entry_times',
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('entry_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('symbol', name=op.f('pk_position_entry_times'))
    )
    op.create_table('trades',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('trade_uid', sa.String(length=128), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('side', sa.String(length=5), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('is_virtual', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('entry_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('entry_price', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('exit_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('exit_price', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('quantity', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('leverage', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('stop_loss', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('take_profit', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('pnl', sa.DOUBLE_PRECISION(), nullable=True, comment='realised PnL in USDT'),
    sa.Column('pnl_pct', sa.DOUBLE_PRECISION(), nullable=True, comment='PnL as a fraction'),
    sa.Column('fees', sa.DOUBLE_PRECISION(), nullable=True, comment='fees paid in USDT'),
    sa.Column('exit_reason', sa.Text(), nullable=True),
    sa.Column('strategy', sa.String(length=64), nullable=True),
    sa.Column('confidence', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('win_probability', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('features', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('source', sa.String(length=64), nullable=False, comment='live, paper, backtest, legacy:<store>'),
    sa.Column('raw', postgresql.JSONB(astext_type=sa.Text()), nullable=True, comment='the original record, for audit'),
    sa.Column('origin', postgresql.JSONB(astext_type=sa.Text()), nullable=True, comment='where the row came from: file, position, variant, naive-time assumption'),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("side IN ('LONG', 'SHORT')", name=op.f('ck_trades_side_valid')),
    sa.CheckConstraint("status IN ('OPEN', 'CLOSED', 'CANCELLED', 'LIQUIDATED')", name=op.f('ck_trades_status_valid')),
    sa.CheckConstraint('confidence IS NULL OR (confidence >= 0 AND confidence <= 1)', name=op.f('ck_trades_confidence_unit')),
    sa.CheckConstraint('win_probability IS NULL OR (win_probability >= 0 AND win_probability <= 1)', name=op.f('ck_trades_win_probability_unit')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trades')),
    sa.UniqueConstraint('trade_uid', name=op.f('uq_trades_trade_uid'))
    )
    op.create_index(op.f('ix_trades_exit_time'), 'trades', ['exit_time'], unique=False)
    op.create_index(op.f('ix_trades_source'), 'trades', ['source'], unique=False)
    op.create_index(op.f('ix_trades_status'), 'trades', ['status'], unique=False)
    op.create_index(op.f('ix_trades_symbol_entry_time'), 'trades', ['symbol', 'entry_time'], unique=False)
    op.create_table('trading_decisions',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('decision_uid', sa.String(length=160), nullable=False),
    sa.Column('session_id', sa.String(length=128), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('price', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('trade_uid', sa.String(length=128), nullable=True),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_decisions')),
    sa.UniqueConstraint('decision_uid', name=op.f('uq_trading_decisions_decision_uid'))
    )
    op.create_index(op.f('ix_trading_decisions_session_id_ts'), 'trading_decisions', ['session_id', 'ts'], unique=False)
    op.create_table('trading_sessions',
    sa.Column('session_id', sa.String(length=128), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('mode', sa.String(length=16), nullable=False, comment='paper, live or backtest'),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ticks', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.PrimaryKeyConstraint('session_id', name=op.f('pk_trading_sessions'))
    )
    op.create_table('training_features',
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('mid', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('microprice', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('obi', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('obi_depth', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('spread_pct', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('hour_sin', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('hour_cos', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('dow_sin', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('dow_cos', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('ofi', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('ret_short', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('realized_vol', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('label', sa.SmallInteger(), nullable=True),
    sa.Column('label_ret', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('label_t1', sa.DateTime(timezone=True), nullable=True),
    sa.Column('label_barrier', sa.String(length=8), nullable=True),
    sa.Column('features_computed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('labels_computed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('label IS NULL OR label IN (-1, 0, 1)', name=op.f('ck_training_features_label_valid')),
    sa.PrimaryKeyConstraint('symbol', 'ts', name=op.f('pk_training_features'))
    )
    op.create_index(op.f('ix_training_features_ts'), 'training_features', ['ts'], unique=False)
    op.create_table('trade_partial_exits',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('exit_uid', sa.String(length=160), nullable=False),
    sa.Column('trade_uid', sa.String(length=128), nullable=True),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('exit_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('exit_price', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('quantity', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('pnl', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('pnl_pct', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('fees', sa.DOUBLE_PRECISION(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('raw', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['trade_uid'], ['trades.trade_uid'], name=op.f('fk_trade_partial_exits_trade_uid_trades'), onupdate='CASCADE', ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trade_partial_exits')),
    sa.UniqueConstraint('exit_uid', name=op.f('uq_trade_partial_exits_exit_uid'))
    )
    op.create_index(op.f('ix_trade_partial_exits_trade_uid'), 'trade_partial_exits', ['trade_uid'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_trade_partial_exits_trade_uid'), table_name='trade_partial_exits')
    op.drop_table('trade_partial_exits')
    op.drop_index(op.f('ix_training_features_ts'), table_name='training_features')
    op.drop_table('training_features')
    op.drop_table('trading_sessions')
    op.drop_index(op.f('ix_trading_decisions_session_id_ts'), table_name='trading_decisions')
    op.drop_table('trading_decisions')
    op.drop_index(op.f('ix_trades_symbol_entry_time'), table_name='trades')
    op.drop_index(op.f('ix_trades_status'), table_name='trades')
    op.drop_index(op.f('ix_trades_source'), table_name='trades')
    op.drop_index(op.f('ix_trades_exit_time'), table_name='trades')
    op.drop_table('trades')
    op.drop_table('position_entry_times')
    op.drop_table('legacy_quarantine')
    op.drop_table('klines')
    op.drop_table('book_snapshots')
    op.drop_index(op.f('ix_archive_manifest_status'), table_name='archive_manifest')
    op.drop_table('archive_manifest')
