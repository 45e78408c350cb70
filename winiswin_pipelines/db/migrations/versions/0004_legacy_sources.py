"""legacy originals in cold storage: legacy_sources; rows point to their record instead of copying it

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 14:00:00.000000

`trades.raw` goes: what it held moves into `origin` first (under `record`, until the store is
migrated again and its rows point into the cold copy of their file instead). Legacy partial exits get
an `origin` with the trade id and direction their record names (what linking reads) and the record;
their `raw` is cleared. `trade_partial_exits.raw` stays for the live recorder's orphan events.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LEGACY = "source LIKE 'legacy:%'"


def upgrade() -> None:
    op.create_table('legacy_sources',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False, comment='where the file was when it was migrated'),
    sa.Column('source', sa.String(length=64), nullable=False, comment='the source of its rows: legacy:<path>'),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('records', sa.BigInteger(), nullable=True, comment='records read by the migration'),
    sa.Column('first_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cold_uri', sa.Text(), nullable=True),
    sa.Column('migrated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('retired_to', sa.Text(), nullable=True, comment='the folder it was moved to; NULL: deleted'),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_legacy_sources')),
    sa.UniqueConstraint('sha256', name=op.f('uq_legacy_sources_sha256'))
    )
    op.create_index(op.f('ix_legacy_sources_source'), 'legacy_sources', ['source'], unique=False)
    op.add_column('trade_partial_exits', sa.Column(
        'origin', postgresql.JSONB(astext_type=sa.Text()), nullable=True,
        comment='a legacy row: file, its sha256, the record\'s place in it, the trade id and direction it names'))
    op.execute(f"""
        UPDATE trade_partial_exits SET raw = NULL, origin = jsonb_strip_nulls(jsonb_build_object(
            'record', raw, 'direction', raw->>'direction',
            'trade_id', COALESCE(NULLIF(raw->>'trade_id', ''), NULLIF(raw->>'entry_id', ''))))
        WHERE {_LEGACY} AND raw IS NOT NULL""")
    op.execute("UPDATE trades SET origin = COALESCE(origin, '{}'::jsonb) || jsonb_build_object('record', raw) "
               "WHERE raw IS NOT NULL")
    op.drop_column('trades', 'raw')
    op.alter_column('trades', 'origin', existing_type=postgresql.JSONB(astext_type=sa.Text()),
                    comment="where the row came from: file, its sha256, the record's line/offset/length, item, "
                    "key or row, variant, naive-time assumption",
                    existing_comment='where the row came from: file, position, variant, naive-time assumption',
                    existing_nullable=True)


def downgrade() -> None:
    op.alter_column('trades', 'origin', existing_type=postgresql.JSONB(astext_type=sa.Text()),
                    comment='where the row came from: file, position, variant, naive-time assumption',
                    existing_nullable=True)
    op.add_column('trades', sa.Column('raw', postgresql.JSONB(astext_type=sa.Text()), nullable=True,
                                      comment='the original record, for audit'))
    op.execute("UPDATE trades SET raw = origin->'record', origin = origin - 'record' WHERE origin ? 'record'")
    op.execute(f"UPDATE trade_partial_exits SET raw = origin->'record' WHERE {_LEGACY} AND origin ? 'record'")
    op.drop_column('trade_partial_exits', 'origin')
    op.drop_index(op.f('ix_legacy_sources_source'), table_name='legacy_sources')
    op.drop_table('legacy_sources')
