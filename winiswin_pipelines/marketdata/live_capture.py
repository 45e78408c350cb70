"""Continuous capture of Binance USDT-M market data into PostgreSQL: what `market_data_capture_job` runs.

The capture subscribes to the depth diffs and the klines of its symbols through `BinanceStream` (the
same streams, connections and books as `BinanceFeed`): connections sharded as Binance allows,
reconnects with back-off, REST depth snapshots within the request-weight budget. Each symbol's book
is rebuilt by the import's own `BookSnapshotter` (`livebook.LiveBook`), so it becomes `book_snapshots`
rows on the same exchange-time grid the file import makes; closed klines become `klines` (those a
reconnect made it miss are fetched over REST). Every `flush_seconds` one transaction COPYs the new
rows (daily partitions are created ahead of the clock, at the start, hourly and when the UTC day
changes), stores the gaps opened or closed (`market_data_gaps`) and writes the heartbeat
(`market_data_captures`: staleness is `now() - last_heartbeat_at`). A write that fails (PostgreSQL
away) keeps its rows for the next flush. Optionally every message is also written to raw capture
files (`capture_files`) that go to cold storage, from which the import can rebuild any day.

The capture ends on `max_messages`, `max_duration`, `stop_after_idle` (tests and replays) or when
`stop` is set (a Dagster run terminated from the UI); it then writes what it holds, gaps still open
included (a later capture continues them), and its final status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.marketdata import repository
from winiswin_pipelines.marketdata.binance import (
    BINANCE_FUTURES_REST,
    BINANCE_FUTURES_WS,
    DEFAULT_STREAMS_PER_CONNECTION,
    DEFAULT_WEIGHT_PER_MINUTE,
    KLINES_PAGE,
    BinanceRestClient,
    BinanceStream,
    RateWindow,
    minutes_to_sync,
    utc_from_us,
)
from winiswin_pipelines.marketdata.capture_files import CaptureFileWriter, recover_partial_files
from winiswin_pipelines.marketdata.feed import ClosedKlines, KlineEvent, kline_from_stream, stream_names
from winiswin_pipelines.marketdata.klines import interval_ms
from winiswin_pipelines.marketdata.livebook import Gap

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 120.0
KLINE_RESUME_WITHIN = dt.timedelta(hours=24)  # a capture backfills the klines since the previous one if this recent
Notify = Callable[[str, str], None]  # (level: "info" | "warning", message)


class CaptureError(RuntimeError):
    """The capture cannot go on (e.g. PostgreSQL has been away so long the buffered rows hit the limit)."""


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture, from where, and when to stop."""

    symbols: tuple[str, ...]
    ws_url: str = BINANCE_FUTURES_WS
    rest_url: str = BINANCE_FUTURES_REST
    depth_stream: str = "depth@100ms"
    kline_interval: str = "1m"
    book_cadence: dt.timedelta = dt.timedelta(seconds=1)
    book_depth: int = 10
    streams_per_connection: int = DEFAULT_STREAMS_PER_CONNECTION
    snapshot_limit: int = 1000
    rest_weight_per_minute: int = DEFAULT_WEIGHT_PER_MINUTE
    flush_seconds: float = 2.0
    max_buffered_rows: int = 500_000
    max_messages: int | None = None
    max_duration: dt.timedelta | None = None
    stop_after_idle: dt.timedelta | None = None
    raw_capture_dir: Path | None = None
    source: str = "binance:live"

    def __post_init__(self) -> None:
        symbols = tuple(dict.fromkeys(s.strip().upper() for s in self.symbols if s.strip()))
        if not symbols:
            raise ValueError("the capture needs at least one symbol")
        object.__setattr__(self, "symbols", symbols)
        interval_ms(self.kline_interval)
        if not self.depth_stream.startswith("depth"):
            raise ValueError(f"depth_stream must be a diff-depth stream such as depth@100ms, got {self.depth_stream!r}")
        if self.book_cadence <= dt.timedelta(0) or self.book_depth <= 0 or self.flush_seconds <= 0:
            raise ValueError("book_cadence, book_depth and flush_seconds must be positive")
        if self.snapshot_limit not in (5, 10, 20, 50, 100, 500, 1000):
            raise ValueError(f"snapshot_limit must be one of Binance's 5, 10, 20, 50, 100, 500, 1000; got "
                             f"{self.snapshot_limit}")

    def stream_names(self) -> list[str]:
        return stream_names(self.symbols, (self.kline_interval,), self.depth_stream)


@dataclass
class CaptureResult:
    capture_id: str
    status: str
    symbols: tuple[str, ...]
    started_at: dt.datetime
    stopped_at: dt.datetime
    messages: int
    book_rows: int
    kline_rows: int
    gaps: list[Gap]
    connections: int
    reconnects: int
    snapshots: int
    raw_files: list[str] = field(default_factory=list)
    flush_failures: int = 0
    last_message_at: dt.datetime | None = None

    @property
    def wall_seconds(self) -> float:
        return (self.stopped_at - self.started_at).total_seconds()

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.wall_seconds if self.wall_seconds > 0 else 0.0


class PartitionUpkeep:
    """Keeps the daily partitions of `klines` and `book_snapshots` a week ahead of the clock: at the
    start, then every `every` and as soon as the UTC day changes (a run crossing midnight)."""

    def __init__(self, manager: DatabaseManager, every: dt.timedelta = dt.timedelta(hours=1),
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)):
        self.manager, self.every, self.clock = manager, every, clock
        self.last: dt.datetime | None = None
        self.runs = 0

    def due(self) -> bool:
        now = self.clock()
        return self.last is None or now - self.last >= self.every or now.date() != self.last.date()

    def run(self) -> None:
        self.manager.create_upcoming_partitions()
        self.last = self.clock()
        self.runs += 1


def kline_row(event: KlineEvent, source: str) -> tuple[Any, ...]:
    """A closed kline as a `klines` row (KLINE_COLUMNS order)."""
    return (*astuple(event)[:-1], source)


class MarketDataCapture:
    """One capture run (see the module docstring); `await run()` once."""

    def __init__(self, manager: DatabaseManager, config: CaptureConfig, *, capture_id: str,
                 run_id: str | None = None, stop: threading.Event | None = None,
                 cold_store: ColdStore | None = None, notify: Notify | None = None):
        self.manager, self.config, self.capture_id, self.run_id = manager, config, capture_id, run_id
        self.stop = stop or threading.Event()
        self.cold_store = cold_store
        self.notify = notify or (lambda level, message: getattr(log, level)(message))
        self.upkeep = PartitionUpkeep(manager)
        self.stream: BinanceStream | None = None
        self._klines = ClosedKlines()
        self._pending_klines: list[tuple] = []
        self._pending_books: list[tuple] = []
        self._pending_gaps: list[Gap] = []
        self._backfills: list[asyncio.Task] = []
        self._gaps: dict[tuple[str, dt.datetime], Gap] = {}
        self._resume_data: dict[str, str] = {}
        self._raw: CaptureFileWriter | None = None
        self.book_rows = self.kline_rows = self.flush_failures = 0

    async def run(self) -> CaptureResult:
        config = self.config
        started_at = dt.datetime.now(dt.UTC)
        started = time.monotonic()
        resume = await asyncio.to_thread(repository.capture_resume_points, self.manager, config.symbols,
                                         exclude=self.capture_id)
        self._resume_data = {symbol: point.last_good.isoformat() for symbol, point in resume.items()}
        kline_resume = await asyncio.to_thread(repository.capture_kline_resume, self.manager, config.symbols,
                                               config.kline_interval, within=KLINE_RESUME_WITHIN,
                                               exclude=self.capture_id)
        for symbol, last_open in kline_resume.items():
            self._klines.seed(symbol, config.kline_interval, last_open)
        names = config.stream_names()
        await asyncio.to_thread(repository.start_capture, self.manager, self.capture_id, run_id=self.run_id,
                                symbols=config.symbols, at=started_at, details=self._describe(len(names)))
        await asyncio.to_thread(self.upkeep.run)
        raw = None
        if config.raw_capture_dir is not None:
            recovered = await asyncio.to_thread(recover_partial_files, config.raw_capture_dir, self.cold_store)
            if recovered:
                self.notify("warning", f"stored {len(recovered)} capture files a previous run left in the spool")
            raw = CaptureFileWriter(config.raw_capture_dir, self.capture_id, started_at, cold_store=self.cold_store)
        sync_minutes = minutes_to_sync(len(config.symbols), config.snapshot_limit, config.rest_weight_per_minute)
        self.notify("info", f"capture {self.capture_id}: {len(config.symbols)} symbols, {len(names)} streams; "
                            f"the REST snapshots of every book fit in {sync_minutes} min of request weight")
        status = "failed"
        async with BinanceRestClient(config.rest_url,
                                     weight_limiter=RateWindow(config.rest_weight_per_minute, 60.0)) as rest:
            stream = BinanceStream(
                config.ws_url, names, rest, snapshot_limit=config.snapshot_limit,
                streams_per_connection=config.streams_per_connection, book_cadence=config.book_cadence,
                book_depth=config.book_depth, book_source=config.source, resume=resume, book_updates=False,
                on_message=raw.write if raw is not None else None, message_limit=config.max_messages,
                tick_seconds=min(1.0, config.flush_seconds / 2),
            )
            self.bind(stream, raw)
            if kline_resume:  # the closed klines since the previous capture's last one
                self._backfills.append(asyncio.create_task(self._klines.missed(rest, page=KLINES_PAGE)))
            updates = stream.updates()
            raw_files: list[str] = []
            try:
                status = await self._consume(updates, rest, started)
            finally:
                await updates.aclose()
                for task in self._backfills:
                    task.cancel()
                await asyncio.gather(*self._backfills, return_exceptions=True)
                self._collect_backfills()
                try:
                    await self.flush(status=status)
                except Exception as error:
                    if status != "failed":
                        raise
                    log.warning("the failed capture's last write failed too: %s: %s", type(error).__name__, error)
                finally:
                    if raw is not None:
                        raw_files = await asyncio.to_thread(raw.close)
        stats = stream.stats
        return CaptureResult(
            self.capture_id, status, config.symbols, started_at, dt.datetime.now(dt.UTC), stats.messages,
            self.book_rows, self.kline_rows, sorted(self._gaps.values(), key=lambda g: (g.start_time, g.symbol)),
            stats.connections, stats.reconnects, stats.snapshots, raw_files, self.flush_failures,
            utc_from_us(stream.last_receive_us) if stream.last_receive_us else None,
        )

    async def _consume(self, updates, rest: BinanceRestClient, started: float) -> str:
        config, stream = self.config, self.stream
        max_seconds = config.max_duration.total_seconds() if config.max_duration else None
        idle_us = int(config.stop_after_idle / dt.timedelta(microseconds=1)) if config.stop_after_idle else None
        started_us = time.time_ns() // 1000
        next_flush = started + config.flush_seconds
        async for update in updates:
            kind = update.kind
            if kind == "kline":
                if update.data["k"]["x"]:
                    fresh = self._klines.fresh([kline_from_stream(update.data)])
                    self._pending_klines += [kline_row(event, config.source) for event in fresh]
            elif kind == "reconnected":
                self._backfills.append(asyncio.create_task(self._klines.missed(rest, update.data["symbols"])))
                self.notify("warning", f"connection {update.data['connection']} is back "
                                       f"({len(update.data['symbols'])} symbols); books resume or resync")
            elif kind == "disconnected":
                self.notify("warning", f"connection {update.data['connection']} lost: {update.data['reason']}")
            if self.stop.is_set():
                return "stopped"
            now = time.monotonic()
            if max_seconds is not None and now - started >= max_seconds:
                return "max_duration"
            if idle_us is not None and time.time_ns() // 1000 - (stream.last_receive_us or started_us) >= idle_us:
                return "idle"
            if now >= next_flush:
                self._collect_backfills()
                await self.flush()
                next_flush = time.monotonic() + config.flush_seconds
        return "max_messages"

    def _collect_backfills(self) -> None:
        for task in [t for t in self._backfills if t.done()]:
            self._backfills.remove(task)
            if task.cancelled():
                continue
            if task.exception() is not None:
                self.notify("warning", f"kline backfill after a reconnect failed: {task.exception()}")
                continue
            self._pending_klines += [kline_row(event, self.config.source) for event in task.result()]

    def bind(self, stream: BinanceStream, raw: CaptureFileWriter | None = None) -> None:
        """The stream (and raw capture files) whose books `flush` writes (what `run` sets up)."""
        self.stream, self._raw = stream, raw

    async def flush(self, *, status: str = "running") -> None:
        """Write the rows, gaps and heartbeat gathered since the last flush (a final status writes the open
        gaps too); a failed write keeps its rows for the next flush, up to `max_buffered_rows`."""
        final = status != "running"
        stream = self.stream
        gaps = []
        for book in stream.books.values():
            self._pending_books += book.take_rows()
            gaps += book.take_gap_changes(including_open=final)
        self._note_gaps(gaps)
        self._pending_gaps += gaps
        klines, books, gaps = self._pending_klines, self._pending_books, self._pending_gaps
        self._pending_klines, self._pending_books, self._pending_gaps = [], [], []
        heartbeat = self._heartbeat(status)
        try:
            results = await asyncio.to_thread(self._write, klines, books, gaps, heartbeat, self._raw)
        except Exception as error:
            if final:
                raise
            self.flush_failures += 1
            self._pending_klines, self._pending_books = klines + self._pending_klines, books + self._pending_books
            self._pending_gaps = gaps + self._pending_gaps
            buffered = len(self._pending_klines) + len(self._pending_books)
            self.notify("warning", f"writing the capture failed ({type(error).__name__}: {error}); "
                                   f"{buffered:,} rows kept for the next flush")
            if buffered > self.config.max_buffered_rows:
                raise CaptureError(f"{buffered:,} rows buffered while PostgreSQL cannot be written "
                                   f"(limit {self.config.max_buffered_rows:,}); stopping the capture") from error
            return
        self.kline_rows += results["klines"].rows if "klines" in results else 0
        self.book_rows += results["book_snapshots"].rows if "book_snapshots" in results else 0

    def _write(self, klines, books, gaps, heartbeat, raw: CaptureFileWriter | None) -> dict:
        if raw is not None:
            raw.flush()
        if self.upkeep.due():
            self.upkeep.run()
        heartbeat["book_rows"] = heartbeat["book_rows"] + len(books)
        heartbeat["kline_rows"] = heartbeat["kline_rows"] + len(klines)
        return repository.write_capture_batch(self.manager, self.capture_id, klines=klines, books=books, gaps=gaps,
                                              heartbeat=heartbeat)

    def _note_gaps(self, gaps: Sequence[Gap]) -> None:
        for gap in gaps:
            key = (gap.symbol, gap.start_time)
            new = key not in self._gaps
            self._gaps[key] = gap
            if gap.end_time is not None:
                self.notify("warning", f"{gap.symbol}: {gap.reason} gap from {gap.start_time.isoformat()} to "
                                       f"{gap.end_time.isoformat()} ({gap.duration.total_seconds():.1f} s)")
            elif new:
                self.notify("warning", f"{gap.symbol}: {gap.reason} gap open since {gap.start_time.isoformat()}")

    def _heartbeat(self, status: str) -> dict[str, Any]:
        stream = self.stream
        stats = stream.stats
        last_data = dict(self._resume_data)
        for symbol, book in stream.books.items():
            if book.last_good_ms is not None:
                last_data[symbol] = book.last_good().isoformat()
        now = dt.datetime.now(dt.UTC)
        return {
            "status": status, "last_heartbeat_at": now, "messages": stats.messages,
            "last_message_at": utc_from_us(stream.last_receive_us) if stream.last_receive_us else None,
            "book_rows": self.book_rows, "kline_rows": self.kline_rows, "gaps": len(self._gaps),
            "details": {
                **self._describe(len(self.config.stream_names())), "last_data": last_data,
                "connections": stats.connections, "reconnects": stats.reconnects, "snapshots": stats.snapshots,
                "books_in_sync": sum(book.is_synced for book in stream.books.values()),
                "open_gaps": sorted(s for s, b in stream.books.items() if b.gap is not None),
                "last_klines": {self.config.kline_interval: {
                    symbol: last.isoformat() for symbol, last in self._klines.last_opens(self.config.kline_interval).items()
                }},
                "flush_failures": self.flush_failures,
            },
        }

    def _describe(self, streams: int) -> dict[str, Any]:
        config = self.config
        return {"streams": streams, "connections_planned": -(-streams // config.streams_per_connection),
                "depth_stream": config.depth_stream, "kline_interval": config.kline_interval,
                "book_cadence_ms": int(config.book_cadence / dt.timedelta(milliseconds=1)),
                "book_depth": config.book_depth, "raw_capture": config.raw_capture_dir is not None,
                "last_data": self._resume_data}


def run_capture(manager: DatabaseManager, config: CaptureConfig, **kwargs: Any) -> CaptureResult:
    """A capture (`MarketDataCapture` keyword arguments) on a new event loop in this thread."""
    return asyncio.run(MarketDataCapture(manager, config, **kwargs).run())


def run_capture_in_thread(capture: MarketDataCapture, *, idle: Callable[[], None] | None = None) -> CaptureResult:
    """`capture.run()` on a worker thread with its own event loop. `idle` is called about once a second
    meanwhile (the caller's own work, e.g. logging notices); an exception in this thread (a Dagster run
    terminated from the UI) stops the capture cleanly (rows written, gaps stored, heartbeat final)
    before it is re-raised."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="market-data-capture")
    future = pool.submit(asyncio.run, capture.run())
    try:
        while True:
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                if idle is not None:
                    idle()
    except BaseException:
        capture.stop.set()
        concurrent.futures.wait([future], timeout=STOP_GRACE_SECONDS)
        raise
    finally:
        if idle is not None:
            idle()
        pool.shutdown(wait=False)
