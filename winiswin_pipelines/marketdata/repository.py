"""Market data in PostgreSQL: writing klines and book snapshots, reading them back for the stored
feed, the checks' queries, and the live capture's gaps and heartbeats."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy import Row, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from winiswin_pipelines.db.bulk import UpsertResult, copy_upsert, replace_row, upsert_frame
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import MarketDataCapture, MarketDataGap
from winiswin_pipelines.marketdata.klines import KLINE_COLUMNS
from winiswin_pipelines.marketdata.livebook import Gap, ResumePoint
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
    with manager.engine.begin() as conn:
        return _write_rows(conn, klines, books)


def _write_rows(conn, klines: Sequence[Sequence[Any]], books: Sequence[Sequence[Any]]) -> dict[str, UpsertResult]:
    results = {}
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


# -- the live capture: gaps and heartbeats -------------------------------------------------------------

def start_capture(manager: DatabaseManager, capture_id: str, *, run_id: str | None, symbols: Sequence[str],
                  at: dt.datetime, details: dict[str, Any]) -> None:
    """The capture's heartbeat row, status "running" since `at` (a capture id started again starts afresh)."""
    values = {"capture_id": capture_id, "run_id": run_id, "status": "running", "symbols": list(symbols),
              "started_at": at, "last_heartbeat_at": at, "last_message_at": None, "stopped_at": None,
              "messages": 0, "book_rows": 0, "kline_rows": 0, "gaps": 0, "details": details}
    with manager.engine.begin() as conn:
        replace_row(conn, MarketDataCapture, values)


def write_capture_batch(
    manager: DatabaseManager, capture_id: str, *, klines: Sequence[Sequence[Any]], books: Sequence[Sequence[Any]],
    gaps: Sequence[Gap], heartbeat: dict[str, Any],
) -> dict[str, UpsertResult]:
    """One flush of the capture in one transaction: klines and book snapshots (COPY, upserted), the gaps
    opened or closed since the last flush, and the heartbeat (`heartbeat`: columns of the capture row;
    a status other than "running" also marks it stopped)."""
    with manager.engine.begin() as conn:
        results = _write_rows(conn, klines, books)
        if gaps:
            _upsert_gaps(conn, capture_id, gaps)
        values = dict(heartbeat)
        if values.get("status", "running") != "running":
            values.setdefault("stopped_at", values.get("last_heartbeat_at"))
        conn.execute(update(MarketDataCapture).where(MarketDataCapture.capture_id == capture_id).values(**values))
    return results


def _upsert_gaps(conn, capture_id: str, gaps: Sequence[Gap]) -> None:
    # A gap is stored when it opens and again when it closes (same key). A gap that continues one
    # left open by an earlier capture keeps that gap's reason; its details are merged.
    rows = {(g.symbol, g.start_time): {"symbol": g.symbol, "start_time": g.start_time, "end_time": g.end_time,
                                       "reason": g.reason, "capture_id": capture_id, "details": g.details}
            for g in gaps}
    statement = insert(MarketDataGap).values(list(rows.values()))
    statement = statement.on_conflict_do_update(
        index_elements=[MarketDataGap.symbol, MarketDataGap.start_time],
        set_={"end_time": statement.excluded.end_time, "updated_at": func.now(),
              "details": func.coalesce(MarketDataGap.details, text("'{}'::jsonb")).op("||")(statement.excluded.details)},
    )
    conn.execute(statement)


def capture_resume_points(manager: DatabaseManager, symbols: Sequence[str], *,
                          exclude: str | None = None) -> dict[str, ResumePoint]:
    """Where earlier captures of `symbols` stopped: the start of a gap they left open, else the last
    exchange time their book was good (from the newest capture heartbeat that names the symbol)."""
    with manager.engine.connect() as conn:
        open_gaps = dict(conn.execute(
            select(MarketDataGap.symbol, func.max(MarketDataGap.start_time))
            .where(MarketDataGap.end_time.is_(None), MarketDataGap.symbol.in_(list(symbols)))
            .group_by(MarketDataGap.symbol)
        ).all())
        recent = conn.execute(
            select(MarketDataCapture.details)
            .where(MarketDataCapture.capture_id != (exclude or ""), MarketDataCapture.symbols.overlap(list(symbols)))
            .order_by(MarketDataCapture.last_heartbeat_at.desc().nulls_last()).limit(50)
        ).scalars().all()
    points = {symbol: ResumePoint(start, continues_open_gap=True) for symbol, start in open_gaps.items()}
    for details in recent:
        for symbol, last in ((details or {}).get("last_data") or {}).items():
            if symbol in symbols and symbol not in points:
                points[symbol] = ResumePoint(dt.datetime.fromisoformat(last))
    return points


def capture_kline_resume(manager: DatabaseManager, symbols: Sequence[str], interval: str, *, within: dt.timedelta,
                         exclude: str | None = None) -> dict[str, dt.datetime]:
    """The open time of the last closed `interval` kline each symbol's newest capture stored, when that
    capture's last heartbeat is less than `within` ago (older holes are the daily import's REST backfill's)."""
    since = dt.datetime.now(dt.UTC) - within
    with manager.engine.connect() as conn:
        recent = conn.execute(
            select(MarketDataCapture.details)
            .where(MarketDataCapture.capture_id != (exclude or ""), MarketDataCapture.last_heartbeat_at >= since,
                   MarketDataCapture.symbols.overlap(list(symbols)))
            .order_by(MarketDataCapture.last_heartbeat_at.desc()).limit(50)
        ).scalars().all()
    last: dict[str, dt.datetime] = {}
    for details in recent:
        for symbol, open_time in ((details or {}).get("last_klines") or {}).get(interval, {}).items():
            if symbol in symbols and symbol not in last:
                last[symbol] = dt.datetime.fromisoformat(open_time)
    return last


def read_gaps(manager: DatabaseManager, *, symbols: Sequence[str] | None = None,
              since: dt.datetime | None = None) -> list[MarketDataGap]:
    """Stored gaps (of `symbols`, starting at or after `since`), by start time then symbol."""
    query = select(MarketDataGap).order_by(MarketDataGap.start_time, MarketDataGap.symbol)
    if symbols is not None:
        query = query.where(MarketDataGap.symbol.in_(list(symbols)))
    if since is not None:
        query = query.where(MarketDataGap.start_time >= since)
    with manager.session() as session:
        return list(session.scalars(query).all())


def read_capture_row(manager: DatabaseManager, capture_id: str) -> MarketDataCapture | None:
    """A capture's heartbeat row."""
    with manager.session() as session:
        return session.get(MarketDataCapture, capture_id)


def stale_captures(manager: DatabaseManager, older_than: dt.timedelta) -> list[tuple[str, dt.datetime | None]]:
    """(capture id, last heartbeat) of every capture still marked running whose heartbeat is older
    than `older_than`: a capture that stopped writing, or died without saying so."""
    with manager.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT capture_id, last_heartbeat_at FROM market_data_captures WHERE status = 'running' "
                 "AND coalesce(last_heartbeat_at, started_at) < now() - :age ORDER BY capture_id"),
            {"age": older_than},
        ).all()
    return [(capture_id, heartbeat) for capture_id, heartbeat in rows]
