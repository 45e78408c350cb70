"""Backtest a UTC day: replay the stored klines and book snapshots through the trading session.

The same session, strategy, risk rules, paper executor and recorder as a live session; only the
feed (StoredFeed) and the source ("backtest") differ. Each symbol is traded on the interval it has
the most stored bars of that day (5m for the bundled April 2023 klines); the bars before the day
(`history_bars` of them) only warm up the indicators. Positions still open at the end of the day
are closed at the last price ("end_of_data"), so every trade of the day is realised.
Costs are those of a paper session: the taker fee, fills walking the stored book where snapshots
exist (else `slippage_bps` from the price), entries at the first event after the signal, and
funding from the `funding_rates` table (at `assumed_funding_rate` where it holds no rate).
Session ids and trade uids are derived from the day, and a re-run first removes the previous
run's rows of that day, so re-materialising a day gives the same rows, not more. The replay reads
klines and snapshots from both storage tiers, so an archived day replays as it did while hot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import pandas as pd

from winiswin_pipelines.archive import read_history
from winiswin_pipelines.archive.history import archived_days
from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.factories import cold_store
from winiswin_pipelines.marketdata.feed import StoredFeed, WindowReader
from winiswin_pipelines.technical.resample import interval_timedelta
from winiswin_pipelines.trading import repository
from winiswin_pipelines.trading.execution import PaperExecutor
from winiswin_pipelines.trading.funding import FundingSchedule
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines.trading.session import SessionConfig, SessionResult

SOURCE = "backtest"


@dataclass(frozen=True)
class DayBacktest:
    day: dt.date
    interval: str
    symbols: list[str]
    result: SessionResult


_KLINE_COLUMNS = ["symbol", "interval", "open_time", "close_time", "open", "high", "low", "close", "volume",
                  "quote_volume", "trade_count", "taker_buy_base_volume", "taker_buy_quote_volume"]
_BOOK_COLUMNS = ["symbol", "exchange_time", "receive_time", "last_update_id", "best_bid", "best_bid_qty", "best_ask",
                 "best_ask_qty", "bid_prices", "bid_sizes", "ask_prices", "ask_sizes"]


def stored_intervals(manager: DatabaseManager, cold: ColdStore, start: dt.datetime, end: dt.datetime) -> dict[str, list[str]]:
    """interval -> symbols that have their most bars in [start, end) at that interval, hot or archived."""
    bars = read_history("klines", start, end, columns=["interval"], manager=manager, store=cold)
    options: dict[str, list[tuple[int, float, str]]] = {}
    for (symbol, interval), count in bars.groupby(["symbol", "interval"]).size().items():
        # Most bars wins; on a tie the shorter interval.
        options.setdefault(symbol, []).append((count, -interval_timedelta(interval).total_seconds(), interval))
    groups: dict[str, list[str]] = {}
    for symbol, choices in sorted(options.items()):
        groups.setdefault(max(choices)[2], []).append(symbol)
    return groups


def session_id_for(day: dt.date, interval: str) -> str:
    return f"{SOURCE}-{day.isoformat()}-{interval}"


def history_window(manager: DatabaseManager, cold: ColdStore) -> WindowReader:
    """The replay's window reader over both storage tiers."""

    def read(symbols: Sequence[str], interval: str, start: dt.datetime, end: dt.datetime, open_from: dt.datetime):
        bars = read_history("klines", open_from, end, symbols, _KLINE_COLUMNS, manager=manager, store=cold)
        bars = bars[(bars["interval"] == interval) & (bars["close_time"] >= start) & (bars["close_time"] < end)]
        books = read_history("book_snapshots", start, end, symbols, _BOOK_COLUMNS, manager=manager, store=cold)
        return _rows(bars[_KLINE_COLUMNS]), _rows(books[_BOOK_COLUMNS])

    return read


def _rows(frame: pd.DataFrame) -> list[tuple]:
    """The frame's rows as tuples, missing values as None."""
    return list(frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None))


def clear_previous_run(manager: DatabaseManager, day: dt.date) -> None:
    """Remove the rows an earlier backtest of `day` wrote (trades, decisions, session rows)."""
    repository.delete_sessions(manager, source=SOURCE, prefix=session_id_for(day, ""))


def backtest_day(manager: DatabaseManager, day: dt.date, config: SessionConfig, *,
                 run_id: str | None = None, cold: ColdStore | None = None, paper: PaperExecutor | None = None,
                 assumed_funding_rate: float | None = None) -> list[DayBacktest]:
    """Backtest every stored symbol on `day`, one session per traded interval. The archived days it
    replays (the day and its indicators' warm-up) are read in place from `cold`."""
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    end = start + dt.timedelta(days=1)
    cold = cold or cold_store()
    clear_previous_run(manager, day)
    results = []
    for interval, symbols in stored_intervals(manager, cold, start, end).items():
        warmup = interval_timedelta(interval) * config.strategy.history_bars(interval)
        session_config = replace(config, interval=interval, trade_from=start, flatten_on_end=True,
                                 resume_open_positions=False, max_events=None, max_duration=None)
        # A replay of hot days only keeps to the plain SQL reads, the cheapest per window.
        archived = any(archived_days(manager, table, start - warmup, end) for table in ("klines", "book_snapshots"))
        result = run_session(
            manager, session_id=session_id_for(day, interval), mode=SOURCE, symbols=symbols,
            feed=StoredFeed(manager, symbols, start - warmup, end, interval=interval,
                            read_window=history_window(manager, cold) if archived else None),
            config=session_config, run_id=run_id, paper=paper,
            funding=FundingSchedule(partial(repository.read_funding_rates, manager), assumed_funding_rate),
        )
        results.append(DayBacktest(day, interval, symbols, result))
    return results
