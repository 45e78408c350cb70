"""Book snapshots and their prices over both tiers: the hot rows through the fast SQL of
`features.repository`, the archived ones read in place from cold storage (only the symbol's row
groups of the days in range), combined in time order. A snapshot in both tiers counts once, hot.

The features, the labels and the look-ahead check read the book through here, so an archived day,
or a day whose warm-up is archived, gives the rows it gave while everything was hot.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection

from winiswin_pipelines.archive import repository as archive_repository
from winiswin_pipelines.archive.history import read_cold
from winiswin_pipelines.archive.tables import archived_table
from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.features import repository
from winiswin_pipelines.features.microstructure import BookArrays

BOOK = archived_table("book_snapshots")
_BEST = ("best_bid", "best_bid_qty", "best_ask", "best_ask_qty")
_SIDES = ("bid_prices", "bid_sizes", "ask_prices", "ask_sizes")
_DAY = dt.timedelta(days=1)


def read_book(
    manager: DatabaseManager, conn: Connection, store: ColdStore, symbol: str, start: dt.datetime,
    end: dt.datetime, *, levels: int,
) -> BookArrays:
    """`symbol`'s snapshots in [start, end), hot and archived, as BookArrays of `levels` levels."""
    hot = repository.read_book(conn, symbol, start, end, levels=levels)
    cold = read_cold(manager, store, BOOK, start, end, [symbol], ["exchange_time", *_BEST, *_SIDES])
    if not cold.num_rows:
        return hot
    return _combined(hot, _arrow_book(cold, levels))


def _nanoseconds(times: pa.ChunkedArray) -> np.ndarray:
    return times.cast(pa.int64()).to_numpy() * 1000  # timestamp[us] -> ns


def _floats(values: pa.ChunkedArray) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False).astype(float)  # NULL -> NaN


def _arrow_book(table: pa.Table, levels: int) -> BookArrays:
    """Archived snapshots as BookArrays, built as the hot SQL builds them: each side padded with
    NaN to `levels`, level 1 from the best_* columns."""
    order = np.argsort(_nanoseconds(table["exchange_time"]), kind="stable")
    best = [_floats(table[name]) for name in _BEST]
    sides = []
    for name, top in zip(_SIDES, best, strict=True):
        lists = table[name].combine_chunks()
        lists = lists.fill_null(pa.scalar([], lists.type))
        matrix = _floats(pc.list_slice(lists, 0, levels, return_fixed_size_list=True).flatten()).reshape(-1, levels)
        matrix[:, 0] = top
        sides.append(matrix[order])
    return BookArrays(_nanoseconds(table["exchange_time"])[order], *sides)


def _combined(hot: BookArrays, cold: BookArrays) -> BookArrays:
    ts = np.concatenate([hot.ts, cold.ts])
    order = np.argsort(ts, kind="stable")  # hot first among equal times
    keep = order[np.concatenate([[True], np.diff(ts[order]) > 0])] if len(order) else order
    arrays = [np.concatenate([h, c])[keep] for h, c in
              zip((hot.bid_px, hot.bid_qty, hot.ask_px, hot.ask_qty), (cold.bid_px, cold.bid_qty, cold.ask_px, cold.ask_qty),
                  strict=True)]
    return BookArrays(ts[keep], *arrays)


def read_prices(
    manager: DatabaseManager, conn: Connection, store: ColdStore, symbol: str, start: dt.datetime, reach: dt.datetime,
) -> pd.DataFrame:
    """Mid and relative spread of `symbol`'s usable snapshots from `start` up to `reach` (inclusive),
    and of the first usable one after `reach` however late, hot and archived: the labels' price path."""
    hot = repository.read_book_prices(conn, symbol, start, reach)
    window_end = dt.datetime.combine(reach.date(), dt.time(), dt.UTC) + 2 * _DAY
    prices = _union(hot, _cold_prices(manager, store, symbol, start, window_end))
    if not (prices.index > reach).any():  # the prices may go on in a later archived day
        prices = _union(prices, _first_cold_price_after(manager, store, symbol, window_end))
    after = prices.index > reach
    return prices[~after | (np.cumsum(after) == 1)]


def _cold_prices(manager: DatabaseManager, store: ColdStore, symbol: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    table = read_cold(manager, store, BOOK, start, end, [symbol], ["exchange_time", "best_bid", "best_ask"])
    prices = repository.book_prices(_nanoseconds(table["exchange_time"]), _floats(table["best_bid"]),
                                    _floats(table["best_ask"]))
    return prices.sort_index(kind="stable")


def _first_cold_price_after(manager: DatabaseManager, store: ColdStore, symbol: str, start: dt.datetime) -> pd.DataFrame:
    """The first usable archived price at or after `start`, searching the archived days in order."""
    for entry in archive_repository.manifest_entries(manager, BOOK.name, start.date(), dt.date.max,
                                                     {archive_repository.ARCHIVED}):
        day_start = max(start, dt.datetime.combine(entry.day, dt.time(), dt.UTC))
        prices = _cold_prices(manager, store, symbol, day_start, day_start + _DAY)
        if len(prices):
            return prices.iloc[:1]
    return NO_PRICES


NO_PRICES = pd.DataFrame({"mid": [], "spread": []}, dtype=float, index=pd.DatetimeIndex([], tz="UTC").as_unit("ns"))


def _union(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    if second.empty:
        return first
    if first.empty:
        return second
    both = pd.concat([first, second])
    return both[~both.index.duplicated(keep="first")].sort_index(kind="stable")
