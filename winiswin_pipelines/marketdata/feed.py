"""Market data feeds behind one interface: live Binance, a replay of recorded captures, stored data.

Every feed yields `KlineEvent`s and `BookEvent`s from `events()`, in exchange-time order:
- `ReplayFeed`: the bundled (or given) websocket captures, rebuilt into books sampled every
  `book_cadence` and into closed klines aggregated from the trades; as fast as possible by
  default (`speed=None`), or `speed` times real time. The default feed.
- `StoredFeed`: klines and book snapshots stored in PostgreSQL (what the backtest replays).
- `BinanceFeed`: the live combined streams (`marketdata.binance.BinanceStream`, shared with the
  market-data capture), with REST warm-up and a REST backfill of the closed klines missed while
  disconnected (`ClosedKlines`, shared too).
`FeedWriter` stores closed klines and book snapshots into the hot tables in batches.

A kline is placed at its close time (that is when it is known); ties go klines first, then symbol.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Protocol

from winiswin_pipelines.db.bulk import EMPTY_RESULT, UpsertResult
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.marketdata import repository, samples
from winiswin_pipelines.marketdata.binance import (
    BINANCE_FUTURES_REST,
    BINANCE_FUTURES_WS,
    SMALL_KLINES_PAGE,
    BinanceAPIError,
    BinanceRestClient,
    BinanceStream,
)
from winiswin_pipelines.marketdata.capture import CaptureMessage, read_capture, stream_symbol
from winiswin_pipelines.marketdata.klines import (
    aggregate_trades_to_klines,
    complete_klines,
    interval_ms,
    trades_from_capture,
)
from winiswin_pipelines.marketdata.orderbook import BookSnapshotter, OrderBook
from winiswin_pipelines.times import EPOCH, from_epoch_ms

log = logging.getLogger(__name__)

# The bundled BTCUSDT and ETHUSDT captures of the same 8 minutes (2024-07-18 23:57 -> 07-19 00:05).
DEFAULT_CAPTURES = (
    samples.CAPTURE_BTCUSDT_20240718, samples.CAPTURE_BTCUSDT_20240719,
    samples.CAPTURE_ETHUSDT_20240718, samples.CAPTURE_ETHUSDT_20240719,
)


@dataclass(frozen=True, slots=True)
class KlineEvent:
    symbol: str
    interval: str
    open_time: dt.datetime
    close_time: dt.datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trade_count: int
    taker_buy_base_volume: float
    taker_buy_quote_volume: float
    closed: bool

    @property
    def time(self) -> dt.datetime:
        """When the bar is known: its close time."""
        return self.close_time


@dataclass(frozen=True, slots=True)
class BookEvent:
    symbol: str
    exchange_time: dt.datetime
    receive_time: dt.datetime | None
    last_update_id: int
    best_bid: float | None
    best_bid_qty: float | None
    best_ask: float | None
    best_ask_qty: float | None
    bid_prices: list[float]
    bid_sizes: list[float]
    ask_prices: list[float]
    ask_sizes: list[float]

    @property
    def time(self) -> dt.datetime:
        return self.exchange_time


MarketEvent = KlineEvent | BookEvent


class MarketFeed(Protocol):
    def events(self) -> AsyncIterator[MarketEvent]:
        """Market events in exchange-time order."""
        ...


def event_order(event: MarketEvent) -> tuple[dt.datetime, int, str]:
    return event.time, 0 if isinstance(event, KlineEvent) else 1, event.symbol


def kline_from_stream(data: dict[str, Any]) -> KlineEvent:
    """A KlineEvent from a websocket `kline` event."""
    k = data["k"]
    return KlineEvent(k["s"], k["i"], from_epoch_ms(k["t"]), from_epoch_ms(k["T"]), float(k["o"]), float(k["h"]),
                      float(k["l"]), float(k["c"]), float(k["v"]), float(k["q"]), int(k["n"]), float(k["V"]),
                      float(k["Q"]), bool(k["x"]))


def kline_from_rest(symbol: str, interval: str, row: Sequence[Any], *, closed: bool = True) -> KlineEvent:
    """A KlineEvent from a REST kline row (Binance's 12-field array)."""
    return KlineEvent(symbol, interval, from_epoch_ms(row[0]), from_epoch_ms(row[6]), float(row[1]), float(row[2]),
                      float(row[3]), float(row[4]), float(row[5]), float(row[7]), int(row[8]), float(row[9]),
                      float(row[10]), closed)


def book_event(symbol: str, book: OrderBook, exchange_time: dt.datetime, receive_time: dt.datetime | None,
               depth: int) -> BookEvent:
    """The top `depth` levels of a live `book` as a BookEvent."""
    levels = book.top(depth)
    best_bid, best_ask = book.best_bid(), book.best_ask()
    return BookEvent(symbol, exchange_time, receive_time, book.last_update_id,
                     *(best_bid or (None, None)), *(best_ask or (None, None)),
                     levels.bid_prices, levels.bid_sizes, levels.ask_prices, levels.ask_sizes)


# -- replay of recorded captures ------------------------------------------------------------------

class ReplayFeed:
    """Recorded websocket captures replayed as closed klines and sampled books, deterministically."""

    def __init__(self, capture_paths: Iterable[str | Path] | None = None, *, kline_interval: str = "1m",
                 book_cadence: dt.timedelta = dt.timedelta(seconds=1), depth: int = 10,
                 speed: float | None = None):
        self.capture_paths = [Path(p) for p in (capture_paths if capture_paths is not None else DEFAULT_CAPTURES)]
        missing = [str(p) for p in self.capture_paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"capture files not found: {', '.join(missing)}")
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive (or None: as fast as possible), got {speed}")
        interval_ms(kline_interval)
        self.kline_interval, self.book_cadence, self.depth, self.speed = kline_interval, book_cadence, depth, speed
        self._events: list[MarketEvent] | None = None

    def load(self) -> list[MarketEvent]:
        """All events of the captures, ordered (computed once)."""
        if self._events is None:
            events: list[MarketEvent] = []
            for symbol, messages in self._messages_by_symbol().items():
                events += self._book_events(symbol, messages) + self._kline_events(symbol, messages)
            self._events = sorted(events, key=event_order)
        return self._events

    async def events(self) -> AsyncIterator[MarketEvent]:
        events = await asyncio.to_thread(self.load)
        previous: dt.datetime | None = None
        for number, event in enumerate(events):
            if self.speed is not None and previous is not None and event.time > previous:
                await asyncio.sleep((event.time - previous).total_seconds() / self.speed)
            elif number % 256 == 0:
                await asyncio.sleep(0)  # let the consumer's other tasks (e.g. the recorder) run
            previous = event.time
            yield event

    def _messages_by_symbol(self) -> dict[str, list[CaptureMessage]]:
        files: dict[str, list[list[CaptureMessage]]] = defaultdict(list)
        for path in self.capture_paths:
            messages = list(read_capture(path, kinds={"depth", "rest_depth", "trade"}))
            symbols = {s for m in messages if (s := stream_symbol(m.stream))}
            if len(symbols) != 1:
                raise ValueError(f"{path}: a replayed capture must hold one symbol, found {sorted(symbols)}")
            files[symbols.pop()].append(messages)
        # A symbol's files are read in time order, through one book (a day's file continues the last).
        return {symbol: [m for part in sorted(parts, key=lambda p: p[0].receive_time) for m in part]
                for symbol, parts in sorted(files.items())}

    def _book_events(self, symbol: str, messages: list[CaptureMessage]) -> list[BookEvent]:
        snapshotter = BookSnapshotter(symbol, self.book_cadence, self.depth)
        for message in messages:
            snapshotter.process(message)
        return [BookEvent(row[0], from_epoch_ms(row[1]), *row[2:12]) for row in snapshotter.take_rows()]

    def _kline_events(self, symbol: str, messages: list[CaptureMessage]) -> list[KlineEvent]:
        trades = trades_from_capture(messages)
        if trades.empty:
            return []
        klines = aggregate_trades_to_klines(trades, symbol=symbol, interval=self.kline_interval)
        # Only bars the capture saw from start to end: the first and last are usually partial.
        klines = complete_klines(klines, trades["trade_time"].min(), trades["trade_time"].max())
        return [
            KlineEvent(r.symbol, r.interval, r.open_time.to_pydatetime(), r.close_time.to_pydatetime(), r.open,
                       r.high, r.low, r.close, r.volume, r.quote_volume, int(r.trade_count),
                       r.taker_buy_base_volume, r.taker_buy_quote_volume, True)
            for r in klines.itertuples(index=False)
        ]


# -- stored market data (the backtest's feed) -----------------------------------------------------

# Bars of an interval that closed in [start, end) (opened from `open_from`) and the book snapshots of
# [start, end): (symbols, interval, start, end, open_from) -> (kline rows, snapshot rows), in the
# column order of `repository.read_window`.
WindowReader = Callable[[Sequence[str], str, dt.datetime, dt.datetime, dt.datetime], tuple[Sequence, Sequence]]


class StoredFeed:
    """Closed klines (placed at their close time) and book snapshots stored in PostgreSQL, in
    [start, end), read a window at a time; `read_window` reads them elsewhere (e.g. from both
    storage tiers for a backtest)."""

    WINDOW = dt.timedelta(hours=1)

    def __init__(self, manager: DatabaseManager, symbols: Sequence[str], start: dt.datetime, end: dt.datetime, *,
                 interval: str = "1m", read_window: WindowReader | None = None):
        for name, value in (("start", start), ("end", end)):
            if value.tzinfo is None:
                raise ValueError(f"StoredFeed {name} must be timezone-aware, got {value.isoformat()}")
        self.symbols, self.interval = [s.upper() for s in symbols], interval
        self.start, self.end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
        self._step = dt.timedelta(milliseconds=interval_ms(interval))
        self._read = read_window or (
            lambda symbols, interval, start, end, open_from: repository.read_window(
                manager, symbols, interval, start, end, open_from=open_from)
        )

    async def events(self) -> AsyncIterator[MarketEvent]:
        window_start = self.start
        while window_start < self.end:
            window_end = min(window_start + max(self.WINDOW, self._step), self.end)
            for event in await asyncio.to_thread(self._read_window, window_start, window_end):
                yield event
            window_start = window_end

    def _read_window(self, start: dt.datetime, end: dt.datetime) -> list[MarketEvent]:
        klines, books = self._read(self.symbols, self.interval, start, end, start - self._step)
        events: list[MarketEvent] = [KlineEvent(*row[:13], True) for row in klines]
        events += [BookEvent(*row[:8], *(list(levels) if levels is not None else [] for levels in row[8:12]))
                   for row in books]
        return sorted(events, key=event_order)


# -- live Binance -----------------------------------------------------------------------------------

class ClosedKlines:
    """The closed klines already passed on, per symbol and interval: each closed kline is passed on
    once, and after a reconnect the ones missed meanwhile are fetched over REST (small pages: a
    reconnect usually misses a bar or two). Shared by `BinanceFeed` and the market-data capture."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], dt.datetime] = {}

    def seed(self, symbol: str, interval: str, last_open: dt.datetime) -> None:
        """Count the closed klines up to `last_open` as passed on (e.g. stored by an earlier capture)."""
        self._last[(symbol, interval)] = last_open

    def last_opens(self, interval: str) -> dict[str, dt.datetime]:
        """The open time of the newest closed kline passed on, per symbol, of `interval`."""
        return {symbol: last for (symbol, iv), last in self._last.items() if iv == interval}

    def fresh(self, events: Iterable[KlineEvent]) -> list[KlineEvent]:
        """The closed klines not passed on yet, remembering the newest per symbol and interval."""
        new = []
        for event in events:
            key = (event.symbol, event.interval)
            if key not in self._last or event.open_time > self._last[key]:
                self._last[key] = event.open_time
                new.append(event)
        return new

    async def missed(self, rest: BinanceRestClient, symbols: Iterable[str] | None = None, *,
                     page: int = SMALL_KLINES_PAGE) -> list[KlineEvent]:
        """The closed klines after the newest passed on (of `symbols`, default all), over REST, ordered
        (`page` bars a request: 99, weight 1, suits the bar or two a reconnect misses)."""
        wanted = None if symbols is None else set(symbols)
        events: list[KlineEvent] = []
        for (symbol, interval), last_open in list(self._last.items()):
            if wanted is not None and symbol not in wanted:
                continue
            start = int((last_open - EPOCH) / dt.timedelta(milliseconds=1)) + interval_ms(interval)
            try:
                rows = await rest.closed_klines_since(symbol, interval, start, page=page)
            except BinanceAPIError as error:
                log.warning("kline backfill of %s %s over REST failed: %s", symbol, interval, error)
                continue
            events += self.fresh(kline_from_rest(symbol, interval, row) for row in rows)
        return sorted(events, key=event_order)


def stream_names(symbols: Sequence[str], intervals: Sequence[str], depth_stream: str | None,
                 extra: Sequence[str] = ()) -> list[str]:
    """The combined-stream names of `symbols`: klines of `intervals`, the depth diffs, and `extra` kinds."""
    names = []
    for symbol in (s.lower() for s in symbols):
        names += [f"{symbol}@kline_{interval}" for interval in intervals]
        names += [f"{symbol}@{kind}" for kind in extra]
        if depth_stream:
            names.append(f"{symbol}@{depth_stream}")
    return names


class BinanceFeed:
    """Live Binance USDT-M market data for `symbols`: klines of `intervals`, books of `depth` levels.

    The streams, connections and books are `binance.BinanceStream`'s, the same as the market-data
    capture's. A BookEvent follows every depth diff applied while the symbol's book is in sync (never
    from a book waiting for its snapshot). The latest bookTicker of each symbol is kept in `tickers`.
    After a reconnect, the closed klines missed meanwhile are fetched over REST and yielded before
    the live ones; each closed kline is yielded once.
    """

    def __init__(self, symbols: Sequence[str], *, ws_url: str = BINANCE_FUTURES_WS,
                 rest_url: str = BINANCE_FUTURES_REST, intervals: Sequence[str] = ("1m",), depth: int = 10,
                 depth_stream: str = "depth@100ms"):
        if not symbols:
            raise ValueError("BinanceFeed needs at least one symbol")
        for interval in intervals:
            interval_ms(interval)
        self.symbols = [s.upper() for s in symbols]
        self.ws_url, self.rest_url, self.intervals, self.depth = ws_url, rest_url, tuple(intervals), depth
        self.depth_stream = depth_stream
        self.tickers: dict[str, dict[str, Any]] = {}
        self.stream: BinanceStream | None = None
        self._klines = ClosedKlines()

    def stream_names(self) -> list[str]:
        return stream_names(self.symbols, self.intervals, self.depth_stream, extra=("bookTicker",))

    async def warm_up(self, bars: int = 500) -> list[KlineEvent]:
        """The last `bars` closed klines of every symbol and interval, over REST, ordered."""
        events: list[KlineEvent] = []
        async with BinanceRestClient(self.rest_url) as rest:
            for symbol in self.symbols:
                for interval in self.intervals:
                    rows = (await rest.klines(symbol, interval, limit=min(bars + 1, 1500)))[:-1]
                    events += self._klines.fresh(kline_from_rest(symbol, interval, row) for row in rows)
        return sorted(events, key=event_order)

    async def events(self) -> AsyncIterator[MarketEvent]:
        async with BinanceRestClient(self.rest_url) as rest:
            self.stream = BinanceStream(self.ws_url, self.stream_names(), rest, snapshot_limit=max(self.depth, 1000),
                                        book_depth=self.depth)
            async for update in self.stream.updates():
                kind = update.kind
                if kind == "book":
                    yield book_event(update.symbol, update.book, from_epoch_ms(update.data["E"]), update.receive_time,
                                     self.depth)
                elif kind == "kline":
                    event = kline_from_stream(update.data)
                    if not event.closed or self._klines.fresh([event]):
                        yield event
                elif kind == "bookTicker":
                    self.tickers[update.symbol] = update.data
                elif kind == "reconnected":
                    for event in await self._klines.missed(rest, update.data["symbols"]):
                        yield event


# -- writing to the hot tables ----------------------------------------------------------------------

class FeedWriter:
    """Buffers closed klines and book snapshots; writes them with `copy_upsert` every `batch_size`
    events (and on `flush()`), in one transaction per batch. Re-writing the same data changes nothing.

    Books are thinned to the first one per symbol in each `book_cadence` slot of exchange time (a
    live feed reports every diff, about 10 a second); `book_cadence=None` keeps every book.
    """

    def __init__(self, manager: DatabaseManager, *, source: str = "feed", batch_size: int = 2_000,
                 book_cadence: dt.timedelta | None = dt.timedelta(seconds=1)):
        self.manager, self.source, self.batch_size = manager, source, batch_size
        self.book_cadence = book_cadence
        self._klines: list[tuple[Any, ...]] = []
        self._books: list[tuple[Any, ...]] = []
        self._book_slots: dict[str, int] = {}
        self.results: dict[str, UpsertResult] = {"klines": EMPTY_RESULT, "book_snapshots": EMPTY_RESULT}

    async def write(self, event: MarketEvent) -> None:
        """Buffer `event` (klines still open are skipped); writes a batch when the buffer is full."""
        if isinstance(event, KlineEvent):
            if event.closed:
                self._klines.append((*astuple(event)[:-1], self.source))
        elif isinstance(event, BookEvent):
            if self._new_book_slot(event):
                self._books.append((*astuple(event), self.source))
        else:
            raise TypeError(f"FeedWriter takes KlineEvent or BookEvent, got {type(event).__name__}")
        if len(self._klines) + len(self._books) >= self.batch_size:
            await self.flush()

    def _new_book_slot(self, event: BookEvent) -> bool:
        if self.book_cadence is None:
            return True
        slot = (event.exchange_time - EPOCH) // self.book_cadence
        if self._book_slots.get(event.symbol) == slot:
            return False
        self._book_slots[event.symbol] = slot
        return True

    async def flush(self) -> dict[str, UpsertResult]:
        """Write what is buffered; returns the running totals per table."""
        klines, books, self._klines, self._books = self._klines, self._books, [], []
        if klines or books:
            await asyncio.to_thread(self._write_rows, klines, books)
        return self.results

    def _write_rows(self, klines: list[tuple], books: list[tuple]) -> None:
        results = repository.write_rows(self.manager, klines, books)
        for table, result in results.items():  # counted once committed
            self.results[table] += result
