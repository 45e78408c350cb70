"""UnifiedTradeRecorder: the one trade recorder. Non-blocking, batched, durable, exactly once.

How a record travels
- `record_*` validate the argument's type and append it to an in-memory queue: no I/O, no await.
- A writer task on the same event loop takes batches (`batch_size`, or whatever is queued after
  `flush_interval`) and writes each batch in ONE transaction (`repository.write_trade_records`,
  async engine, psycopg 3): entries upsert on `trade_uid`, partial exits on `exit_uid`,
  closes/cancels update the trade with that `trade_uid`; `position_entry_times` is brought up to
  date in the same transaction.
- If PostgreSQL is unreachable, the batch is appended to an fsynced spool (segment files of JSON
  lines under `spool_dir`, default `<state dir>/spool/<source>`). While the spool holds records,
  new batches go behind them, so the database sees every record in recording order; the writer
  retries with back-off and deletes a segment only after its records are committed.
- `start()` first writes what a previous process left in the spool (crash, SIGKILL).
- Several recorders of one source may run at once (e.g. backtests of several days): each holds
  its own lane `<spool_dir>/lane-<n>` (a file lock), and a starting recorder adopts the segments
  of lanes no live process holds, so nothing a dead process spooled is left behind.
Every write is an idempotent upsert keyed by `trade_uid` / `exit_uid`, and an entry never touches
the exit columns or status of its trade, so a segment replayed after a crash between commit and
delete leaves the same rows: each record is stored exactly once.

Pairing: an exit belongs to the trade with its `trade_uid` (and symbol), never to "the open trade on
the symbol". An exit whose entry is unknown is kept, not dropped, as an *orphan* row of
`trade_partial_exits` with `trade_uid` NULL and the whole event in `raw` (a close or cancel gets
`exit_uid` "<trade_uid>:close" / "<trade_uid>:cancel"). When that entry is recorded later, the
orphans are attached: partial exits get their `trade_uid`, an orphan close/cancel is applied to the
trade and its orphan row removed.

`position_entry_times` (keyed by symbol) holds, for each symbol this recorder touched, the fill time
of the earliest OPEN trade of this recorder's source on the symbol: the real fill time on open, the
row deleted when the last position on the symbol closes or is cancelled. With two positions on one
symbol, closing one leaves the other's fill time. Only live trading (source "live") writes it by
default: paper sessions and backtests keep their fill times on their own trades, so neither a paper
session nor a replay of history ever moves a live position's time stop.

Data errors (a constraint the database rejects) are isolated record by record; a rejected record is
appended with its reason to `rejected.jsonl` in the recorder's lane, never dropped.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy.exc

from winiswin_pipelines import settings
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.errors import describe
from winiswin_pipelines.trading import repository
from winiswin_pipelines.trading.events import (
    TradeCancelled,
    TradeClosed,
    TradeEvent,
    TradeOpened,
    TradePartiallyClosed,
    event_from_record,
)

log = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 15.0  # an unanswered write is treated as a lost connection: spool, replay later
RETRY_BACKOFF_S = (0.2, 5.0)  # first and largest pause between attempts while the database is down
_LATENCY_WINDOW = 4096


class SpoolLockedError(RuntimeError):
    """Another live recorder owns this spool folder."""


class Spool:
    """Append-only, fsynced segment files of records (one JSON object per line), read in order."""

    SEGMENT_BYTES = 4 << 20

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_handle = open(self.directory / ".lock", "w")  # noqa: SIM115 - held for the spool's life
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_handle.close()
            raise SpoolLockedError(f"another running recorder holds the spool {self.directory}") from None
        self.rejected_file = self.directory / "rejected.jsonl"
        for segment in self.segments():
            self._drop_torn_tail(segment)
        self.pending = sum(self._count_lines(segment) for segment in self.segments())

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("segment-*.jsonl"))

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append and fsync: when this returns the records survive a crash."""
        segments = self.segments()
        if segments and segments[-1].stat().st_size < self.SEGMENT_BYTES:
            target, created = segments[-1], False
        else:
            target, created = self._next_segment(segments), True
        payload = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in records).encode()
        with open(target, "ab") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if created:
            self._fsync_directory()
        self.pending += len(records)

    def read(self, segment: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        """(line number, record or None when undecodable, raw line) of a segment."""
        with open(segment, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    yield number, json.loads(line), line
                except json.JSONDecodeError:
                    yield number, None, line

    def adopt(self, other: Spool) -> int:
        """Move the segments of `other` (a lane no process holds) behind ours; returns their records."""
        moved = 0
        for segment in other.segments():
            records = self._count_lines(segment)
            os.rename(segment, self._next_segment(self.segments()))
            other.pending -= records
            moved += records
        if moved:
            self._fsync_directory()
            other._fsync_directory()
            self.pending += moved
        return moved

    def remove(self, segment: Path, records: int) -> None:
        segment.unlink()
        self._fsync_directory()
        self.pending = max(0, self.pending - records)

    def reject(self, entries: Sequence[dict[str, Any]]) -> None:
        with open(self.rejected_file, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(entry, default=str) + "\n" for entry in entries)
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        self._lock_handle.close()

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _next_segment(self, segments: list[Path]) -> Path:
        number = int(segments[-1].stem.split("-")[1]) + 1 if segments else 1
        return self.directory / f"segment-{number:012d}.jsonl"

    @staticmethod
    def _count_lines(segment: Path) -> int:
        with open(segment, "rb") as handle:
            return sum(1 for _ in handle)

    @staticmethod
    def _drop_torn_tail(segment: Path) -> None:
        # A crash during append can leave a partial last line; it was never acknowledged as
        # durable (the fsync had not returned), so it is cut off rather than misread.
        data = segment.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("spool %s: dropping %d bytes of an unfinished last line", segment, len(data) - keep)
            with open(segment, "r+b") as handle:
                handle.truncate(keep)
                os.fsync(handle.fileno())


class UnifiedTradeRecorder:
    """Records trade events of one `source` (live, paper, backtest) into PostgreSQL; see module doc."""

    def __init__(
        self,
        manager: DatabaseManager,
        *,
        source: str,
        spool_dir: Path | None = None,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        track_entry_times: bool | None = None,
    ):
        if not source or len(source) > 64:
            raise ValueError(f"source must be a non-empty name of at most 64 characters, got {source!r}")
        if batch_size < 1 or flush_interval <= 0:
            raise ValueError(f"batch_size must be >= 1 and flush_interval > 0, got {batch_size}, {flush_interval}")
        self.manager = manager
        self.source = source
        self.spool_dir = Path(spool_dir) if spool_dir is not None else settings.state_dir() / "spool" / source
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.track_entry_times = source == "live" if track_entry_times is None else track_entry_times
        self._queue: collections.deque[TradeEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._enqueued = 0  # records accepted so far
        self._durable = 0  # of those, records committed to PostgreSQL or fsynced to the spool
        self._flush_requested = False
        self._closing = False
        self._writer: asyncio.Task | None = None
        self._spool: Spool | None = None
        self._next_attempt = 0.0
        self._backoff = RETRY_BACKOFF_S[0]
        self._latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_WINDOW)
        self._counts = {"written": 0, "retried": 0, "spooled": 0, "rejected": 0, "orphans": 0}
        self._last_error: str | None = None

    # -- the trading loop's API: each call only enqueues ------------------------------------------

    async def record_entry(self, event: TradeOpened) -> None:
        self._enqueue(event, TradeOpened)

    async def record_partial_exit(self, event: TradePartiallyClosed) -> None:
        self._enqueue(event, TradePartiallyClosed)

    async def record_exit(self, event: TradeClosed) -> None:
        self._enqueue(event, TradeClosed)

    async def record_cancel(self, event: TradeCancelled) -> None:
        self._enqueue(event, TradeCancelled)

    def _enqueue(self, event: TradeEvent, expected: type[TradeEvent]) -> None:
        if type(event) is not expected:
            raise TypeError(f"expected a {expected.__name__}, got {type(event).__name__}")
        if self._closing:
            raise RuntimeError(f"the {self.source} trade recorder is closed; {event.trade_uid!r} was not recorded")
        self._queue.append(event)
        self._enqueued += 1
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool, write what an earlier process left in it, start the writer."""
        if self._writer is not None:
            return
        self._spool = await asyncio.to_thread(_claim_lane, self.spool_dir)
        if self._spool.pending:
            log.info("%s recorder: %d spooled records from an earlier run", self.source, self._spool.pending)
            await self._drain_spool()
        self._writer = asyncio.create_task(self._run(), name=f"trade-recorder-{self.source}")

    async def flush(self) -> None:
        """Return once everything recorded so far is in PostgreSQL or in the fsynced spool."""
        if self._writer is None:
            raise RuntimeError(f"the {self.source} trade recorder was not started (await start() first)")
        target = self._enqueued
        while self._durable < target:
            if self._writer.done():
                self._writer.result()  # re-raise what killed the writer
            self._flush_requested = True
            self._progress.clear()
            self._wake.set()
            await self._progress.wait()

    async def close(self) -> None:
        """Flush, try once more to empty the spool, stop the writer and release the spool."""
        if self._writer is None and self._queue:
            raise RuntimeError(f"the {self.source} trade recorder holds {len(self._queue)} records but was never "
                               "started (await start() first)")
        if self._writer is None or self._closing:
            return
        await self.flush()
        self._closing = True
        self._wake.set()
        await self._writer
        if self._spool.pending:
            self._next_attempt = 0.0
            await self._drain_spool()
        self._spool.close()

    def metrics(self) -> dict[str, Any]:
        latencies = sorted(self._latencies)
        return {
            "queued": self._enqueued,
            "in_memory": len(self._queue),
            **self._counts,
            "spool_pending": self._spool.pending if self._spool else 0,
            "write_latency_p50_ms": _percentile(latencies, 0.50) * 1000,
            "write_latency_p99_ms": _percentile(latencies, 0.99) * 1000,
            "last_error": self._last_error,
        }

    # -- the writer task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if len(self._queue) < self.batch_size and not (self._flush_requested or self._closing):
                try:
                    await asyncio.wait_for(self._wake.wait(), self.flush_interval)
                except TimeoutError:
                    pass
            self._wake.clear()
            self._flush_requested = False
            try:
                await self._store_queued()
            except OSError as exc:
                # The spool itself failed (disk full?): the batch went back to the queue; retry later.
                self._note_failure(exc)
                log.error("%s recorder: cannot write the spool %s: %s", self.source, self._spool.directory, exc)
                await asyncio.sleep(self._backoff)
            self._progress.set()
            if self._closing and not self._queue:
                return

    async def _store_queued(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            try:
                await self._store(batch)
            except BaseException:
                self._queue.extendleft(reversed(batch))
                raise
            self._durable += len(batch)
            self._progress.set()
        if self._spool.pending:
            await self._drain_spool()

    async def _store(self, batch: list[TradeEvent]) -> None:
        records = [event.to_record() for event in batch]
        if not self._spool.pending:
            try:
                await self._write(records)
                return
            except _TRANSIENT_ERRORS as exc:
                self._note_failure(exc)
        # Behind earlier spooled records (or the database is down): keep the order on disk.
        await asyncio.to_thread(self._spool.append, records)
        self._counts["spooled"] += len(records)

    async def _drain_spool(self) -> None:
        """Write spooled segments oldest first; stop at the first failure and retry later."""
        if time.monotonic() < self._next_attempt:
            return
        for segment in self._spool.segments():
            records, bad = await asyncio.to_thread(self._read_segment, segment)
            try:
                for chunk in _chunks(records, self.batch_size):
                    await self._write(chunk)
            except _TRANSIENT_ERRORS as exc:
                self._note_failure(exc)
                return
            if bad:
                await asyncio.to_thread(self._spool.reject, bad)
                self._counts["rejected"] += len(bad)
            await asyncio.to_thread(self._spool.remove, segment, len(records) + len(bad))
        self._backoff = RETRY_BACKOFF_S[0]

    def _read_segment(self, segment: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        records, bad = [], []
        for number, record, line in self._spool.read(segment):
            where = f"{segment.name}:{number}"
            if record is None:
                bad.append({"where": where, "reason": "not valid JSON", "raw": line})
                continue
            try:
                records.append(event_from_record(record).to_record())
            except (TypeError, ValueError) as exc:
                bad.append({"where": where, "reason": str(exc), "raw": record})
        return records, bad

    def _note_failure(self, exc: BaseException) -> None:
        self._counts["retried"] += 1
        self._last_error = self._describe(exc)
        self._next_attempt = time.monotonic() + self._backoff
        log.warning("%s recorder: database write failed (%s); spooling, retry in %.1fs",
                    self.source, self._last_error, self._backoff)
        self._backoff = min(self._backoff * 2, RETRY_BACKOFF_S[1])

    def _describe(self, exc: BaseException) -> str:
        return describe(exc, secret=self.manager.url.password)[:500]

    # -- database writes ---------------------------------------------------------------------------

    async def _write(self, records: list[dict[str, Any]]) -> None:
        """Write `records` in one transaction; a data error isolates and rejects the bad records."""
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._transaction(records), WRITE_TIMEOUT_S)
            written = len(records)
        except _DATA_ERRORS:
            written = await self._write_one_by_one(records)
        self._latencies.append(time.perf_counter() - started)
        self._counts["written"] += written

    async def _write_one_by_one(self, records: list[dict[str, Any]]) -> int:
        written = 0
        for record in records:
            try:
                await asyncio.wait_for(self._transaction([record]), WRITE_TIMEOUT_S)
                written += 1
            except _DATA_ERRORS as exc:
                reason = self._describe(exc)
                log.error("%s recorder: database rejected %s %s: %s", self.source, record["kind"],
                          record.get("exit_uid") or record["trade_uid"], reason)
                await asyncio.to_thread(self._spool.reject, [{"reason": reason, "raw": record}])
                self._counts["rejected"] += 1
        return written

    async def _transaction(self, records: list[dict[str, Any]]) -> None:
        self._counts["orphans"] += await repository.write_trade_records(
            self.manager, self.source, records, track_entry_times=self.track_entry_times)


def _claim_lane(root: Path) -> Spool:
    """The first lane of `root` no live recorder holds, with the segments of other free lanes."""
    root.mkdir(parents=True, exist_ok=True)
    claimed: Spool | None = None
    number = 0
    while claimed is None:
        try:
            claimed = Spool(root / f"lane-{number}")
        except SpoolLockedError:
            number += 1
    for lane in sorted(root.glob("lane-*")):
        if lane == claimed.directory:
            continue
        try:
            other = Spool(lane)
        except SpoolLockedError:
            continue  # a live recorder's lane
        try:
            if moved := claimed.adopt(other):
                log.info("adopted %d spooled records from %s", moved, lane)
        finally:
            other.close()
    return claimed


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# Only a record the database refuses (SQLSTATE classes 22 and 23) is a data error; anything else
# (server down, connection lost, timeouts, even a missing table) keeps the record for a retry.
_DATA_ERRORS = (sqlalchemy.exc.DataError, sqlalchemy.exc.IntegrityError)
_TRANSIENT_ERRORS = (sqlalchemy.exc.SQLAlchemyError, OSError, TimeoutError)
