"""Market data in PostgreSQL: writing klines and book snapshots, reading them back for the stored
feed, and the checks' queries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy import Row, text

from winiswin_pipelines.db.bulk import UpsertResult, copy_upsert, upsert_frame
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.marketdata.klines import KLINE_COLUMNS
from winiswin_pipelines.marketdata.orderbook import BOOK_SNAPSHOT_COLUMNS

_WRITE_BATCH = 50_000
_KLINE_KEY = ("symbol", "interval", "open_time")
_BOOK_KEY = ("symbol", "exchange_time")


def write_klines(manager: DatabaseManager, frame: pd.DataFrame) -> UpsertResult:
    """Upsert bars keyed by (symbol, interval, open_time), in one transaction."""
    with manager.engine.begin() as conn:
        return upsert_frame(conn, "klines", KLINE_COLUMNS, frame, conflict_columns=_KLINE_KEY,
                            batch_size=_WRITE_BATCH)


def write_book_snapshots(manager: DatabaseManager, frame: pd.DataFrame) -> UpsertResult:
    """Upsert snapshots keyed by (symbol, exchange_time), in one transaction."""
    with manager.engine.begin() as conn:
        return upsert_frame(conn, "book_snapshots", BOOK_SNAPSHOT_COLUMNS, frame,
                            conflict_columns=_BOOK_KEY, batch_size=_WRITE_BATCH)


def write_rows(
    manager: DatabaseManager, klines: Sequence[Sequence[Any]], books: Sequence[Sequence[Any]]
) -> dict[str, UpsertResult]:
    """Upsert kline and book-snapshot tuples (in KLINE_COLUMNS / BOOK_SNAPSHOT_COLUMNS order) in one transaction."""
    results = {}
    with manager.engine.begin() as conn:
        if klines:
            results["klines"] = copy_upsert(conn, "klines", KLINE_COLUMNS, klines, conflict_columns=_KLINE_KEY)
        if books:
            results["book_snapshots"] = copy_upsert(conn, "book_snapshots", BOOK_SNAPSHOT_COLUMNS, books,
                                                    conflict_columns=_BOOK_KEY)
    return results


_WINDOW_KLINES = text("""
SELECT symbol, interval, open_time, close_time, open, high, low, close, volume, quote_volume, trade_count,
       taker_buy_base_volume, taker_buy_quote_volume
FROM klines
WHERE symbol = ANY(:symbols) AND interval = :interval
  AND open_time >= :open_from AND open_time < :end AND close_time >= :start AND close_time < :end
""")
_WINDOW_BOOKS = text("""
SELECT symbol, exchange_time, receive_time, last_update_id, best_bid, best_bid_qty, best_ask, best_ask_qty,
       bid_prices, bid_sizes, ask_prices, ask_sizes
FROM book_snapshots
WHERE symbol = ANY(:symbols) AND exchange_time >= :start AND exchange_time < :end
""")


def read_window(
    manager: DatabaseManager, symbols: Sequence[str], interval: str, start: dt.datetime, end: dt.datetime, *,
    open_from: dt.datetime,
) -> tuple[list[Row], list[Row]]:
    """Bars of `interval` that closed in [start, end) (opened from `open_from`) and the snapshots of [start, end)."""
    params = {"symbols": list(symbols), "interval": interval, "start": start, "end": end, "open_from": open_from}
    with manager.engine.connect() as conn:
        return conn.execute(_WINDOW_KLINES, params).all(), conn.execute(_WINDOW_BOOKS, params).all()


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
