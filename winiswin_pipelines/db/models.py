"""Typed SQLAlchemy 2 models: the one schema of the platform.

Every table has a natural key so that every writer can upsert and be re-run. Every timestamp is
TIMESTAMPTZ holding UTC. The high-volume time series (`klines`, `book_snapshots`) are range
partitioned by UTC day (see `winiswin_pipelines.db.partitions`), so an archived day leaves by
dropping its partition and the disk space really comes back.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UtcDateTime = DateTime(timezone=True)

# Tables range-partitioned by UTC day, mapped to their partition column.
DAILY_PARTITIONED_TABLES: dict[str, str] = {"klines": "open_time", "book_snapshots": "exchange_time"}


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {
        dt.datetime: UtcDateTime,
        float: DOUBLE_PRECISION,
        dict[str, Any]: JSONB,
        str: String,
    }


def _created_at() -> Mapped[dt.datetime]:
    return mapped_column(UtcDateTime, nullable=False, server_default=func.now())


def _updated_at() -> Mapped[dt.datetime]:
    return mapped_column(UtcDateTime, nullable=False, server_default=func.now(), onupdate=func.now())


class PositionEntryTime(Base):
    """When the open position on a symbol was filled; the 2-hour time stop survives restarts."""

    __tablename__ = "position_entry_times"

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    entry_time: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    updated_at: Mapped[dt.datetime] = _updated_at()


class TradeStatus(StrEnum):
    """What a trade's status means, in one place.

    OPEN: the position is held (or was when its store was written); its exit is still to come, so
    the row changes and stays hot. CLOSED, CANCELLED and LIQUIDATED are final: the row no longer
    changes, and only final trades are archived.
    """

    OPEN = "OPEN"
    CLOSED = "CLOSED"
    CANCELLED = "CANCELLED"
    LIQUIDATED = "LIQUIDATED"


def open_trade_sql(alias: str | None = None) -> str:
    """SQL condition: the trade (of table alias `alias`) is OPEN."""
    return f"{alias + '.' if alias else ''}status = '{TradeStatus.OPEN}'"


def final_trade_sql(alias: str | None = None) -> str:
    """SQL condition: the trade (of table alias `alias`) is final (not OPEN)."""
    return f"{alias + '.' if alias else ''}status <> '{TradeStatus.OPEN}'"


class Trade(Base):
    """One row per position: live, paper, backtest or migrated from a legacy store."""

    __tablename__ = "trades"
    __table_args__ = (
        CheckConstraint("side IN ('LONG', 'SHORT')", name="side_valid"),
        CheckConstraint(f"status IN ({', '.join(repr(str(s)) for s in TradeStatus)})", name="status_valid"),
        CheckConstraint("confidence IS NULL OR (confidence >= 0 AND confidence <= 1)", name="confidence_unit"),
        CheckConstraint(
            "win_probability IS NULL OR (win_probability >= 0 AND win_probability <= 1)",
            name="win_probability_unit",
        ),
        Index(None, "symbol", "entry_time"),
        Index(None, "exit_time"),
        Index(None, "status"),
        Index(None, "source"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    trade_uid: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    side: Mapped[str] = mapped_column(String(5), nullable=False)
    status: Mapped[str] = mapped_column(String(12), nullable=False)
    is_virtual: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    entry_time: Mapped[dt.datetime | None]
    entry_price: Mapped[float | None]
    exit_time: Mapped[dt.datetime | None]
    exit_price: Mapped[float | None]
    quantity: Mapped[float | None]
    leverage: Mapped[float | None]
    stop_loss: Mapped[float | None]
    take_profit: Mapped[float | None]
    pnl: Mapped[float | None] = mapped_column(DOUBLE_PRECISION, comment="realised PnL in USDT")
    pnl_pct: Mapped[float | None] = mapped_column(DOUBLE_PRECISION, comment="PnL as a fraction")
    fees: Mapped[float | None] = mapped_column(DOUBLE_PRECISION, comment="fees paid in USDT")
    exit_reason: Mapped[str | None] = mapped_column(Text)
    strategy: Mapped[str | None] = mapped_column(String(64))
    confidence: Mapped[float | None]
    win_probability: Mapped[float | None]
    features: Mapped[dict[str, Any] | None]
    source: Mapped[str] = mapped_column(String(64), nullable=False, comment="live, paper, backtest, legacy:<store>")
    origin: Mapped[dict[str, Any] | None] = mapped_column(
        JSONB, comment="where the row came from: file, its sha256, the record's line/offset/length, item, key or "
        "row, variant, naive-time assumption"
    )
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class TradePartialExit(Base):
    """A partial close of a position; the rest of the position stays open on its trade."""

    __tablename__ = "trade_partial_exits"
    __table_args__ = (Index(None, "trade_uid"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    exit_uid: Mapped[str] = mapped_column(String(160), unique=True, nullable=False)
    trade_uid: Mapped[str | None] = mapped_column(
        String(128), ForeignKey("trades.trade_uid", ondelete="CASCADE", onupdate="CASCADE")
    )
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    exit_time: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    exit_price: Mapped[float | None]
    quantity: Mapped[float | None]
    pnl: Mapped[float | None]
    pnl_pct: Mapped[float | None]
    fees: Mapped[float | None]
    reason: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(64), nullable=False)
    # The live recorder keeps an orphan event (a partial exit, close or cancel before its entry) here.
    raw: Mapped[dict[str, Any] | None]
    origin: Mapped[dict[str, Any] | None] = mapped_column(
        JSONB, comment="a legacy row: file, its sha256, the record's place in it, the trade id and direction it names"
    )
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class LegacySource(Base):
    """One legacy file's bytes: kept in cold storage (zstd, content-addressed by their SHA-256), then migrated.

    `verified_at`: the cold copy was last read back and gave the original SHA-256; `checked_at`: the
    accounting check of the migration last passed; the file may be retired only after both.
    """

    __tablename__ = "legacy_sources"
    __table_args__ = (Index(None, "source"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False, comment="where the file was when it was migrated")
    source: Mapped[str] = mapped_column(String(64), nullable=False, comment="the source of its rows: legacy:<path>")
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    format: Mapped[str] = mapped_column(String(32), nullable=False)
    records: Mapped[int | None] = mapped_column(BigInteger, comment="records read by the migration")
    first_time: Mapped[dt.datetime | None]
    last_time: Mapped[dt.datetime | None]
    cold_uri: Mapped[str | None] = mapped_column(Text)
    migrated_at: Mapped[dt.datetime | None]
    verified_at: Mapped[dt.datetime | None]
    checked_at: Mapped[dt.datetime | None]
    retired_at: Mapped[dt.datetime | None]
    retired_to: Mapped[str | None] = mapped_column(Text, comment="the folder it was moved to; NULL: deleted")
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class Kline(Base):
    """A Binance USDT-M candlestick (all 11 data columns of Binance's kline files)."""

    __tablename__ = "klines"
    __table_args__ = ({"postgresql_partition_by": "RANGE (open_time)"},)

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    interval: Mapped[str] = mapped_column(String(8), primary_key=True)
    open_time: Mapped[dt.datetime] = mapped_column(UtcDateTime, primary_key=True)
    close_time: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    open: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False)
    high: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False)
    low: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False)
    close: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False)
    volume: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False)
    quote_volume: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False)
    trade_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    taker_buy_base_volume: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False)
    taker_buy_quote_volume: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False)
    source: Mapped[str | None] = mapped_column(String(64))


class BookSnapshot(Base):
    """Top of the L2 order book at one exchange time, with the top-N levels as arrays."""

    __tablename__ = "book_snapshots"
    __table_args__ = ({"postgresql_partition_by": "RANGE (exchange_time)"},)

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    exchange_time: Mapped[dt.datetime] = mapped_column(UtcDateTime, primary_key=True)
    receive_time: Mapped[dt.datetime | None]
    last_update_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    best_bid: Mapped[float | None]
    best_bid_qty: Mapped[float | None]
    best_ask: Mapped[float | None]
    best_ask_qty: Mapped[float | None]
    bid_prices: Mapped[list[float] | None] = mapped_column(ARRAY(DOUBLE_PRECISION))
    bid_sizes: Mapped[list[float] | None] = mapped_column(ARRAY(DOUBLE_PRECISION))
    ask_prices: Mapped[list[float] | None] = mapped_column(ARRAY(DOUBLE_PRECISION))
    ask_sizes: Mapped[list[float] | None] = mapped_column(ARRAY(DOUBLE_PRECISION))
    source: Mapped[str | None] = mapped_column(String(64))


class TrainingFeature(Base):
    """Microstructure features and triple-barrier labels, one row per symbol and timestamp."""

    __tablename__ = "training_features"
    __table_args__ = (
        CheckConstraint("label IS NULL OR label IN (-1, 0, 1)", name="label_valid"),
        Index(None, "ts"),
    )

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime, primary_key=True)
    mid: Mapped[float | None]
    microprice: Mapped[float | None]
    obi: Mapped[float | None]
    obi_depth: Mapped[float | None]
    spread_pct: Mapped[float | None]
    hour_sin: Mapped[float | None]
    hour_cos: Mapped[float | None]
    dow_sin: Mapped[float | None]
    dow_cos: Mapped[float | None]
    ofi: Mapped[float | None]
    ret_short: Mapped[float | None]
    realized_vol: Mapped[float | None]
    label: Mapped[int | None] = mapped_column(SmallInteger)
    label_ret: Mapped[float | None]
    label_t1: Mapped[dt.datetime | None]
    label_barrier: Mapped[str | None] = mapped_column(String(8))
    label_cost: Mapped[float | None]  # round-trip cost the horizontal barriers had to exceed; NULL: gross labels
    features_computed_at: Mapped[dt.datetime | None]
    labels_computed_at: Mapped[dt.datetime | None]


class ArchiveManifest(Base):
    """What was archived where: one row per table and UTC day."""

    __tablename__ = "archive_manifest"
    __table_args__ = (
        UniqueConstraint("table_name", "day"),
        Index(None, "status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    table_name: Mapped[str] = mapped_column(String(64), nullable=False)
    day: Mapped[dt.date] = mapped_column(Date, nullable=False)
    uri: Mapped[str | None] = mapped_column(Text)
    object_uris: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    rows: Mapped[int | None] = mapped_column(BigInteger)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(128))
    fingerprint: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class LegacyQuarantine(Base):
    """A legacy record that could not be migrated, kept with the reason and its raw text."""

    __tablename__ = "legacy_quarantine"
    __table_args__ = (UniqueConstraint("source", "position"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    position: Mapped[str] = mapped_column(String(64), nullable=False, comment="line number or row id")
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    raw_text: Mapped[str | None] = mapped_column(Text)
    variant: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class TradingSession(Base):
    """One long-running trading session run and its heartbeat."""

    __tablename__ = "trading_sessions"

    session_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16), nullable=False, comment="paper, live or backtest")
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    last_heartbeat_at: Mapped[dt.datetime | None]
    stopped_at: Mapped[dt.datetime | None]
    ticks: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    details: Mapped[dict[str, Any] | None]


class TradingDecision(Base):
    """What the strategy decided at one tick and why (entries, exits, skips worth keeping)."""

    __tablename__ = "trading_decisions"
    __table_args__ = (Index(None, "session_id", "ts"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    decision_uid: Mapped[str] = mapped_column(String(160), unique=True, nullable=False)
    session_id: Mapped[str] = mapped_column(String(128), nullable=False)
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    price: Mapped[float | None]
    trade_uid: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = _created_at()


ORDER_INTENT_STATUSES = ("pending", "filled", "closed", "rejected", "unfilled")


class OrderIntent(Base):
    """An entry order a live session is about to send, written before it is sent (write-ahead).

    A session that starts after a crash (kill -9 between the order and its recording) looks every
    `pending` or `filled` intent up on the exchange by its client id: the filled ones whose trade is
    not recorded are recorded, the others are settled, so no entry is forgotten or sent twice.
    pending: sent or about to be, outcome unknown; filled: the entry filled (its trade may be open);
    closed: its trade is over; rejected: Binance refused it; unfilled: it never filled.
    """

    __tablename__ = "order_intents"
    __table_args__ = (
        CheckConstraint("side IN ('LONG', 'SHORT')", name="side_valid"),
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in ORDER_INTENT_STATUSES)})", name="status_valid"),
        Index(None, "mode", "status"),
    )

    client_id: Mapped[str] = mapped_column(String(36), primary_key=True, comment="newClientOrderId of the entry")
    trade_uid: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    session_id: Mapped[str] = mapped_column(String(128), nullable=False)
    mode: Mapped[str] = mapped_column(String(16), nullable=False, comment="live (or paper)")
    symbol: Mapped[str] = mapped_column(String(32), nullable=False)
    side: Mapped[str] = mapped_column(String(5), nullable=False)
    quantity: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False, comment="quantity asked for")
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    details: Mapped[dict[str, Any] | None] = mapped_column(
        JSONB, comment="what the session knew when it sent the entry: levels, reference price, signal"
    )
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class TradingHalt(Base):
    """A halt of live trading, kept across restarts: while one is in force no live entry is sent.

    In force from `started_at` until `cleared_at` (NULL: until someone clears it, e.g. `flatten_and_halt`
    or a max-drawdown halt; a time: it lifts itself then, e.g. the daily loss limit at 00:00 UTC). An
    open-ended halt also keeps the supervisor sensor from starting live sessions.
    """

    __tablename__ = "trading_halts"
    __table_args__ = (Index(None, "cleared_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    reason: Mapped[str] = mapped_column(String(64), nullable=False, comment="max_drawdown, daily_loss_limit, "
                                        "flatten_and_halt, ...")
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    cleared_at: Mapped[dt.datetime | None]
    details: Mapped[dict[str, Any] | None]


GAP_REASONS = ("restart", "reconnect", "sequence_break", "snapshot_resync")


class MarketDataGap(Base):
    """A span of exchange time in which the live capture has no trustworthy book for a symbol.

    `start_time` is the exchange time of the last update known good, `end_time` that of the first
    update after the book is in sync again (NULL while the gap is still open). Book snapshots are
    missing between the two. `reason` says what opened the gap: the capture `restart`ed, its
    connection dropped (`reconnect`), a diff broke the `pu` chain (`sequence_break`), or a REST
    snapshot did not bridge the buffered diffs (`snapshot_resync`).
    """

    __tablename__ = "market_data_gaps"
    __table_args__ = (
        CheckConstraint(f"reason IN ({', '.join(repr(r) for r in GAP_REASONS)})", name="reason_valid"),
        CheckConstraint("end_time IS NULL OR end_time >= start_time", name="end_not_before_start"),
        Index(None, "start_time"),
    )

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    start_time: Mapped[dt.datetime] = mapped_column(UtcDateTime, primary_key=True)
    end_time: Mapped[dt.datetime | None]
    reason: Mapped[str] = mapped_column(String(32), nullable=False)
    capture_id: Mapped[str | None] = mapped_column(String(128), comment="the capture that saw the gap open")
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = _created_at()
    updated_at: Mapped[dt.datetime] = _updated_at()


class MarketDataCapture(Base):
    """One live market-data capture run and its heartbeat (staleness: now - last_heartbeat_at)."""

    __tablename__ = "market_data_captures"

    capture_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), nullable=False, comment="running, or how it ended")
    symbols: Mapped[list[str]] = mapped_column(ARRAY(String(32)), nullable=False)
    started_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, nullable=False)
    last_heartbeat_at: Mapped[dt.datetime | None]
    last_message_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, comment="local receive time")
    stopped_at: Mapped[dt.datetime | None]
    messages: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    book_rows: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    kline_rows: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    gaps: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    details: Mapped[dict[str, Any] | None]



class FundingRate(Base):
    """A funding event of a USDT-M perpetual (`GET /fapi/v1/fundingRate`): the rate a position open at
    `funding_time` paid (long, rate > 0) or received, on its notional at `mark_price`."""

    __tablename__ = "funding_rates"

    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    funding_time: Mapped[dt.datetime] = mapped_column(UtcDateTime, primary_key=True)
    funding_rate: Mapped[float] = mapped_column(DOUBLE_PRECISION, nullable=False)
    mark_price: Mapped[float | None]  # empty in Binance's oldest records

# Tables that grow with time, with the column that places a row in a UTC day (for archival).
TIME_SERIES_TABLES: dict[str, str] = {
    "klines": "open_time",
    "book_snapshots": "exchange_time",
    "training_features": "ts",
    "trades": "exit_time",
    "trading_decisions": "ts",
}
