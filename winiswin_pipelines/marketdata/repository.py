"""Market data in PostgreSQL: writing klines and book snapshots, and the checks' queries."""

from __future__ import annotations

import datetime as dt

import pandas as pd
from sqlalchemy import text

from winiswin_pipelines.db.bulk import UpsertResult, upsert_frame
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.marketdata.klines import KLINE_COLUMNS
from winiswin_pipelines.marketdata.orderbook import BOOK_SNAPSHOT_COLUMNS

_WRITE_BATCH = 50_000


def write_klines(manager: DatabaseManager, frame: pd.DataFrame) -> UpsertResult:
    """Upsert bars keyed by (symbol, interval, open_time), in one transaction."""
    with manager.engine.begin() as conn:
        return upsert_frame(conn, "klines", KLINE_COLUMNS, frame, conflict_columns=("symbol", "interval", "open_time"),
                            batch_size=_WRITE_BATCH)


def write_book_snapshots(manager: DatabaseManager, frame: pd.DataFrame) -> UpsertResult:
    """Upsert snapshots keyed by (symbol, exchange_time), in one transaction."""
    with manager.engine.begin() as conn:
        return upsert_frame(conn, "book_snapshots", BOOK_SNAPSHOT_COLUMNS, frame,
                            conflict_columns=("symbol", "exchange_time"), batch_size=_WRITE_BATCH)


def count_crossed_books(manager: DatabaseManager, start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
    """(snapshots, crossed or locked snapshots) in [start, end)."""
    with manager.engine.connect() as conn:
        total, crossed = conn.execute(
            text("SELECT count(*), count(*) FILTER (WHERE best_bid >= best_ask) FROM book_snapshots "
                 "WHERE exchange_time >= :start AND exchange_time < :end"),
            {"start": start, "end": end},
        ).one()
    return total, crossed


def count_inconsistent_klines(manager: DatabaseManager, start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
    """(bars, bars breaking low <= open, close <= high or the volume and time rules) in [start, end)."""
    with manager.engine.connect() as conn:
        total, bad = conn.execute(
            text("SELECT count(*), count(*) FILTER (WHERE NOT ("
                 "low <= least(open, close) AND high >= greatest(open, close) AND volume >= 0 "
                 "AND trade_count >= 0 AND taker_buy_base_volume BETWEEN 0 AND volume "
                 "AND close_time > open_time)) FROM klines WHERE open_time >= :start AND open_time < :end"),
            {"start": start, "end": end},
        ).one()
    return total, bad


def snapshot_days(manager: DatabaseManager) -> list[dt.date]:
    """The UTC days that hold book snapshots, in order."""
    with manager.engine.connect() as conn:
        return list(conn.execute(
            text("SELECT DISTINCT (exchange_time AT TIME ZONE 'UTC')::date FROM book_snapshots ORDER BY 1")
        ).scalars())
