"""L2 order book rebuilt by Binance USDT-M futures rules, and `book_snapshots` sampled from it.

Rules (Binance "How to manage a local order book correctly", USDT-M futures):
1. buffer the diff stream; take a REST depth snapshot (`lastUpdateId`);
2. drop buffered diffs with `u < lastUpdateId`;
3. the first diff applied must satisfy `U <= lastUpdateId <= u`;
4. afterwards every diff's `pu` must equal the previous diff's `u`, else the book is out of sync:
   it is invalid until the next snapshot.
A quantity of 0 removes the price level.
"""

from __future__ import annotations

import datetime as dt
import enum
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from winiswin_pipelines.marketdata.capture import REST_DEPTH, CaptureMessage, stream_symbol
from winiswin_pipelines.times import from_epoch_ms

BOOK_SNAPSHOT_COLUMNS = (
    "symbol", "exchange_time", "receive_time", "last_update_id", "best_bid", "best_bid_qty",
    "best_ask", "best_ask_qty", "bid_prices", "bid_sizes", "ask_prices", "ask_sizes", "source",
)


class DiffResult(enum.Enum):
    APPLIED = "applied"  # the book moved forward (SYNCED is the first diff after a snapshot)
    SYNCED = "synced"
    STALE = "stale"  # older than the snapshot, dropped as the rules say
    BUFFERED = "buffered"  # no usable snapshot yet: kept until one arrives
    GAP = "gap"  # sequence broken: the book is invalid until the next snapshot


class _Side:
    """One side of the book: price -> size, plus the prices kept sorted ascending."""

    __slots__ = ("sizes", "prices")

    def __init__(self) -> None:
        self.sizes: dict[float, float] = {}
        self.prices: list[float] = []

    def load(self, levels: Iterable[Sequence[str]]) -> None:
        self.sizes = {float(p): float(q) for p, q in levels}
        self.sizes = {p: q for p, q in self.sizes.items() if q > 0}
        self.prices = sorted(self.sizes)

    def update(self, levels: Iterable[Sequence[str]]) -> None:
        sizes, prices = self.sizes, self.prices
        for price_text, size_text in levels:
            price, size = float(price_text), float(size_text)
            if size == 0.0:
                if sizes.pop(price, None) is not None:
                    del prices[bisect_left(prices, price)]
            else:
                if price not in sizes:
                    insort(prices, price)
                sizes[price] = size


@dataclass(frozen=True)
class BookLevels:
    """The top levels of both sides: bids best (highest) first, asks best (lowest) first."""

    bid_prices: list[float]
    bid_sizes: list[float]
    ask_prices: list[float]
    ask_sizes: list[float]


class OrderBook:
    """A local L2 book kept in sync with Binance's diff-depth stream.

    Diffs that arrive before a usable snapshot are buffered (up to `buffer_size`) and replayed
    when the snapshot is applied, exactly as Binance asks a live client to do.
    """

    def __init__(self, buffer_size: int = 10_000) -> None:
        self._bids = _Side()
        self._asks = _Side()
        self._snapshot_id: int | None = None
        self._synced = False
        self._buffer: deque[dict[str, Any]] = deque(maxlen=buffer_size)
        self.last_update_id: int | None = None

    @property
    def is_valid(self) -> bool:
        return self._synced

    def apply_snapshot(self, snapshot: dict[str, Any]) -> list[tuple[dict[str, Any], DiffResult]]:
        """Load a REST depth snapshot, then replay the buffered diffs; returns them with their results."""
        return [(diff, self.apply_diff(diff)) for diff in self.load_snapshot(snapshot)]

    def load_snapshot(self, snapshot: dict[str, Any]) -> list[dict[str, Any]]:
        """Load a REST depth snapshot; returns the buffered diffs, which the caller must apply next.

        A snapshot no newer than a book that is in sync is ignored: the book is already ahead.
        """
        snapshot_id = int(snapshot["lastUpdateId"])
        if self._synced and snapshot_id <= self.last_update_id:
            return []
        self._bids.load(snapshot["bids"])
        self._asks.load(snapshot["asks"])
        self._snapshot_id = self.last_update_id = snapshot_id
        self._synced = False
        buffered, self._buffer = list(self._buffer), deque(maxlen=self._buffer.maxlen)
        return buffered

    def apply_diff(self, diff: dict[str, Any]) -> DiffResult:
        """Apply one `depthUpdate` event (fields U, u, pu, b, a) by the futures rules."""
        first, last = diff["U"], diff["u"]
        if self._synced:
            if diff["pu"] != self.last_update_id:
                self._invalidate()
                self._buffer.append(diff)
                return DiffResult.GAP
            result = DiffResult.APPLIED
        elif self._snapshot_id is None:
            self._buffer.append(diff)
            return DiffResult.BUFFERED
        elif last < self._snapshot_id:
            return DiffResult.STALE
        elif first <= self._snapshot_id:
            self._synced, result = True, DiffResult.SYNCED
        else:
            # The diff that bridges the snapshot is missing: this snapshot cannot be used.
            self._invalidate()
            self._buffer.append(diff)
            return DiffResult.GAP
        self._bids.update(diff["b"])
        self._asks.update(diff["a"])
        self.last_update_id = last
        return result

    def continues(self, diff: dict[str, Any]) -> bool:
        """Whether `diff` follows the last applied one (`pu` chain); trivially true while not synced."""
        return not self._synced or diff["pu"] == self.last_update_id

    def _invalidate(self) -> None:
        self._synced = False
        self._snapshot_id = None

    def best_bid(self) -> tuple[float, float] | None:
        """(price, size) of the highest bid, None when that side is empty."""
        prices = self._bids.prices
        return (prices[-1], self._bids.sizes[prices[-1]]) if prices else None

    def best_ask(self) -> tuple[float, float] | None:
        """(price, size) of the lowest ask, None when that side is empty."""
        prices = self._asks.prices
        return (prices[0], self._asks.sizes[prices[0]]) if prices else None

    def top(self, n: int) -> BookLevels:
        """The best `n` levels of each side (fewer when the side is thinner)."""
        bid_prices = self._bids.prices[: -n - 1 : -1]
        ask_prices = self._asks.prices[:n]
        return BookLevels(
            bid_prices, [self._bids.sizes[p] for p in bid_prices],
            ask_prices, [self._asks.sizes[p] for p in ask_prices],
        )


@dataclass(frozen=True)
class BookGap:
    """A break in the diff sequence (or a snapshot with no bridging diff)."""

    exchange_time: dt.datetime
    receive_time: dt.datetime
    expected_pu: int | None  # the `u` the book had reached (or the snapshot's lastUpdateId)
    pu: int | None
    first_update_id: int  # U of the diff that did not fit
    last_update_id: int  # its u


@dataclass
class InvalidPeriod:
    """Exchange-time span during which the book could not be trusted; `end` None: until the end."""

    start: dt.datetime | None
    end: dt.datetime | None
    reason: str  # "no snapshot yet" or "gap"


@dataclass
class BookSnapshotter:
    """Feeds capture messages to an `OrderBook` and samples it every `cadence` of exchange time.

    A snapshot at grid time `t` (a multiple of `cadence` since the epoch) is the book after every
    diff whose event time `E` is at or before `t`; it is emitted once a later diff shows that
    nothing else happened up to `t`. `receive_time` is the local receive time of the last diff
    applied. No snapshot is emitted while the book is invalid.
    """

    symbol: str
    cadence: dt.timedelta
    depth: int
    source: str | None = None
    book: OrderBook = field(default_factory=OrderBook)
    gaps: list[BookGap] = field(default_factory=list)
    invalid_periods: list[InvalidPeriod] = field(default_factory=list)
    _cadence_ms: int = 0
    _next_ms: int | None = None
    _last_receive: dt.datetime | None = None
    _last_applied_ms: int | None = None
    _rows: list[tuple[Any, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cadence_ms = int(self.cadence / dt.timedelta(milliseconds=1))
        if self._cadence_ms <= 0 or self.depth <= 0:
            raise ValueError(f"cadence ({self.cadence}) and depth ({self.depth}) must be positive")
        self.invalid_periods.append(InvalidPeriod(None, None, "no snapshot yet"))

    def process(self, message: CaptureMessage) -> int:
        """Take one message (other symbols and non-depth streams are ignored); returns rows emitted."""
        if message.stream == REST_DEPTH:
            # Buffered diffs are replayed one by one so that grid times between them are sampled;
            # their state became known when the snapshot was received.
            buffered = self.book.load_snapshot(message.data)
            return sum(self._apply(diff, message.receive_time) for diff in buffered)
        if message.kind != "depth" or stream_symbol(message.stream) != self.symbol:
            return 0
        return self._apply(message.data, message.receive_time)

    def _apply(self, diff: dict[str, Any], receive_time: dt.datetime) -> int:
        # A diff that breaks the chain shows that diffs were lost since the last one applied, at times
        # unknown: the grid times after that one are not sampled from a book that missed them.
        emitted = self._emit_until(diff["E"]) if self.book.is_valid and self.book.continues(diff) else 0
        self._track(diff, receive_time, self.book.apply_diff(diff))
        return emitted

    def _track(self, diff: dict[str, Any], receive_time: dt.datetime, result: DiffResult) -> None:
        event_ms = diff["E"]
        if result is DiffResult.GAP:
            when = from_epoch_ms(event_ms)
            self.gaps.append(
                BookGap(when, receive_time, self.book.last_update_id, diff.get("pu"), diff["U"], diff["u"])
            )
            if self.invalid_periods[-1].end is not None:  # invalid since the last diff known good
                since = from_epoch_ms(self._last_applied_ms) if self._last_applied_ms is not None else when
                self.invalid_periods.append(InvalidPeriod(since, None, "gap"))
        elif result in (DiffResult.APPLIED, DiffResult.SYNCED):
            self._last_receive = receive_time
            self._last_applied_ms = event_ms
            if result is DiffResult.SYNCED:
                if self.invalid_periods[-1].end is None:
                    self.invalid_periods[-1].end = from_epoch_ms(event_ms)
                # Sampling resumes at the first grid time at or after the diff that synced the book.
                resume_ms = -(-event_ms // self._cadence_ms) * self._cadence_ms
                self._next_ms = max(self._next_ms or resume_ms, resume_ms)

    def _emit_until(self, event_ms: int) -> int:
        count = 0
        while self._next_ms < event_ms:
            self._rows.append(self._row(self._next_ms))
            self._next_ms += self._cadence_ms
            count += 1
        return count

    def _row(self, grid_ms: int) -> tuple[Any, ...]:
        levels = self.book.top(self.depth)
        bid = levels.bid_prices[0] if levels.bid_prices else None
        ask = levels.ask_prices[0] if levels.ask_prices else None
        return (
            self.symbol, grid_ms, self._last_receive, self.book.last_update_id,
            bid, levels.bid_sizes[0] if bid is not None else None,
            ask, levels.ask_sizes[0] if ask is not None else None,
            levels.bid_prices, levels.bid_sizes, levels.ask_prices, levels.ask_sizes, self.source,
        )

    def take_rows(self) -> list[tuple[Any, ...]]:
        """The snapshots emitted since the last call, as tuples in `BOOK_SNAPSHOT_COLUMNS` order
        (exchange_time as epoch milliseconds)."""
        rows, self._rows = self._rows, []
        return rows

    def frame(self) -> pd.DataFrame:
        """The snapshots emitted so far (and not taken) as a `book_snapshots` DataFrame."""
        return snapshot_frame(self.take_rows())


def snapshot_frame(rows: list[tuple[Any, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(BOOK_SNAPSHOT_COLUMNS))
    frame["exchange_time"] = pd.to_datetime(frame["exchange_time"].astype("int64"), unit="ms", utc=True)
    frame["receive_time"] = pd.to_datetime(frame["receive_time"], utc=True)
    frame["last_update_id"] = frame["last_update_id"].astype("int64")
    for column in ("best_bid", "best_bid_qty", "best_ask", "best_ask_qty"):
        frame[column] = frame[column].astype("float64")
    return frame


def rebuild_book_snapshots(
    messages: Iterable[CaptureMessage], *, symbol: str, cadence: dt.timedelta, depth: int,
    source: str | None = None,
) -> pd.DataFrame:
    """`book_snapshots` rows (exactly the table's columns) rebuilt from capture messages."""
    snapshotter = BookSnapshotter(symbol.upper(), cadence, depth, source)
    for message in messages:
        snapshotter.process(message)
    return snapshotter.frame()
