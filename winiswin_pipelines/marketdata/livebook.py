"""One symbol's live L2 book: Binance's depth rules through the import's own `BookSnapshotter`, and
the gaps in it.

The live paths (the capture job and `BinanceFeed`, both through `binance.BinanceStream`) hand every
depth diff and every REST snapshot, in the order they are received, to a `BookSnapshotter`: the
very code the file import replays a capture through (`orderbook.py`), so the same messages make the
same `book_snapshots` rows on the same exchange-time grid. Around it `LiveBook` keeps what only a
live client needs:

- whether a REST snapshot must be fetched, and when it may be asked again (a snapshot that does
  not bridge the buffered diffs is asked again after a back-off, doubling up to a minute);
- the gaps: spans of exchange time in which the book could not be trusted. A gap starts at the
  exchange time `E` of the last diff applied while the book was good and ends at the `E` of the
  first diff applied once it is good again. What opened it is its reason: the capture `restart`ed
  (the previous run's last good time), the connection dropped (`reconnect`), a diff's `pu` broke
  the chain (`sequence_break`), or a snapshot did not bridge the diffs received (`snapshot_resync`).
  One gap per incident: whatever else happens while it is open (more breaks, snapshots, reconnects)
  is counted in its details.

One difference from the import, on purpose: when a diff breaks the `pu` chain, the import's
`BookSnapshotter` has already sampled the grid up to that diff's `E` from a book that missed the lost
diffs; `LiveBook` drops those rows, so no row lies inside a gap (the import keeps them: see
`orderbook.BookSnapshotter._apply`). Elsewhere the rows are the import's, one for one.

A reconnect does not reset the book: Binance's rule is the `pu` chain, so when the first diff after
the reconnect continues it, nothing was missed and the book goes on; when it does not, the diff is a
sequence break and the book waits for a new snapshot, as after any break.
"""

from __future__ import annotations

import datetime as dt
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from winiswin_pipelines.db.models import GAP_REASONS
from winiswin_pipelines.marketdata.capture import REST_DEPTH, CaptureMessage
from winiswin_pipelines.marketdata.orderbook import BookSnapshotter, OrderBook
from winiswin_pipelines.times import EPOCH, from_epoch_ms

RESTART, RECONNECT, SEQUENCE_BREAK, SNAPSHOT_RESYNC = GAP_REASONS
SNAPSHOT_RETRY = (1.0, 60.0)  # seconds before asking again after a snapshot that failed; doubles up to the max


class SyncState(enum.Enum):
    WAITING = "waiting"  # needs a REST snapshot (none asked yet, or the last one failed / did not bridge)
    REQUESTED = "requested"  # a snapshot request is in flight
    LOADED = "loaded"  # a snapshot is loaded; waiting for the diff that bridges it
    SYNCED = "synced"  # in sync: every diff continues the pu chain


@dataclass
class Gap:
    """A span of exchange time without a trustworthy book (see the module docstring)."""

    symbol: str
    start_time: dt.datetime
    reason: str
    end_time: dt.datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        return self.end_time is None

    @property
    def duration(self) -> dt.timedelta | None:
        return None if self.end_time is None else self.end_time - self.start_time

    def count(self, what: str) -> None:
        self.details[what] = self.details.get(what, 0) + 1


@dataclass(frozen=True)
class ResumePoint:
    """Where a previous capture of a symbol stopped: the last exchange time its book was good, and
    whether the gap starting there is already stored (still open) and is to be continued."""

    last_good: dt.datetime
    continues_open_gap: bool = False


class LiveBook:
    """A symbol's book kept by Binance's rules from live messages, its `book_snapshots` rows and its gaps."""

    def __init__(self, symbol: str, *, cadence: dt.timedelta = dt.timedelta(seconds=1), depth: int = 10,
                 source: str | None = None, resume: ResumePoint | None = None,
                 retry: tuple[float, float] = SNAPSHOT_RETRY):
        self.symbol = symbol
        self.snapshotter = BookSnapshotter(symbol, cadence, depth, source)
        self.state = SyncState.WAITING
        self.gap: Gap | None = None
        self.last_good_ms: int | None = None  # E of the last diff applied while in sync
        self.first_seen_ms: int | None = None
        self.sequence_breaks = 0  # diffs that did not fit (pu breaks, snapshots not bridged)
        self.snapshots = 0
        self.ever_synced = False
        self._retry = retry
        self._retry_delay = retry[0]
        self.next_request_at = 0.0  # time.monotonic() before which no snapshot is asked
        self._last_unsynced: dict[str, Any] | None = None  # the newest diff received while not in sync
        self._changed: dict[dt.datetime, Gap] = {}  # gaps to store (keyed by start), newest state
        self._continues_open_gap = False
        if resume is not None:
            # Not stored until it closes (or the run ends with it open): a capture that replays older
            # data than the last run's does not continue that run, and then no gap is written.
            self.gap = Gap(symbol, resume.last_good, RESTART)
            self._continues_open_gap = resume.continues_open_gap

    # -- state ----------------------------------------------------------------------------------------

    @property
    def book(self) -> OrderBook:
        return self.snapshotter.book

    @property
    def is_synced(self) -> bool:
        return self.state is SyncState.SYNCED

    def wants_snapshot(self, now: float) -> bool:
        return self.state is SyncState.WAITING and now >= self.next_request_at

    def snapshot_requested(self) -> None:
        self.state = SyncState.REQUESTED

    def snapshot_failed(self, now: float) -> None:
        """The snapshot request failed (network, HTTP error): ask again after the back-off."""
        self.state = SyncState.WAITING
        self._back_off(now)
        if self.gap is not None:
            self.gap.count("snapshot_failures")

    def last_good(self) -> dt.datetime | None:
        return None if self.last_good_ms is None else from_epoch_ms(self.last_good_ms)

    # -- messages ---------------------------------------------------------------------------------------

    def on_diff(self, stream: str, diff: dict[str, Any], receive_time: dt.datetime) -> bool:
        """Take one depth diff (`stream` is its stream name); True when the book applied it and is in sync."""
        snapshotter = self.snapshotter
        was_synced = self.state is SyncState.SYNCED
        breaks = len(snapshotter.gaps)
        # A diff that breaks the chain samples nothing from the book that missed the lost diffs.
        snapshotter.process(CaptureMessage(receive_time, stream, diff))
        event_ms = diff["E"]
        if self.first_seen_ms is None:
            self.first_seen_ms = event_ms
        if snapshotter.book.is_valid:
            self.last_good_ms = event_ms
            if not was_synced:
                self._synced(self._synced_at_ms())
            elif self.gap is not None:  # a reconnect after which the pu chain simply went on
                self._close_gap(event_ms)
            return True
        self._last_unsynced = diff
        if len(snapshotter.gaps) > breaks:
            self.sequence_breaks += 1
            if was_synced:
                self.state = SyncState.WAITING
                self._open_gap(SEQUENCE_BREAK, {"expected_pu": snapshotter.gaps[-1].expected_pu, "pu": diff.get("pu")})
            else:  # the loaded snapshot is older than this diff's U: it cannot be bridged
                self._not_bridged(time.monotonic())
        return False

    def on_snapshot(self, snapshot: dict[str, Any], receive_time: dt.datetime,
                    now: float | None = None) -> dict[str, Any] | None:
        """Load a REST depth snapshot and replay the buffered diffs; returns the diff the book is in
        sync at when it got in sync, else None (waiting for the bridging diff, or asking again)."""
        now = time.monotonic() if now is None else now
        snapshotter = self.snapshotter
        if self.state is SyncState.SYNCED:
            return None  # asked before the book got in sync some other way: the book is ahead
        breaks = len(snapshotter.gaps)
        snapshotter.process(CaptureMessage(receive_time, REST_DEPTH, snapshot))
        self.snapshots += 1
        if self.gap is not None:
            self.gap.count("snapshots")
        if snapshotter.book.is_valid and self._last_unsynced is not None:
            newest = self._last_unsynced  # the buffered diffs were all applied: the book is at the newest
            self.last_good_ms = newest["E"]
            self._synced(self._synced_at_ms())
            return newest
        if len(snapshotter.gaps) > breaks:
            self.sequence_breaks += 1
            self._not_bridged(now)
        else:
            self.state = SyncState.LOADED
        return None

    def on_disconnect(self) -> None:
        """The connection carrying this symbol dropped: messages may be missed until it is back."""
        if self.gap is not None:
            self.gap.count("reconnects")
        elif self.last_good_ms is not None:
            self._open_gap(RECONNECT, {}, start_ms=self.last_good_ms)

    # -- output -----------------------------------------------------------------------------------------

    def take_rows(self) -> list[tuple[Any, ...]]:
        """The `book_snapshots` rows emitted since the last call (BOOK_SNAPSHOT_COLUMNS order, aware times)."""
        return [(row[0], from_epoch_ms(row[1]), *row[2:]) for row in self.snapshotter.take_rows()]

    def take_gap_changes(self, *, including_open: bool = False) -> list[Gap]:
        """Gaps opened or closed since the last call (their newest state); `including_open` adds the gap
        still open (a restart gap is otherwise stored only once it closes)."""
        if including_open and self.gap is not None:
            self._changed[self.gap.start_time] = self.gap
        changed, self._changed = list(self._changed.values()), {}
        return changed

    # -- internals --------------------------------------------------------------------------------------

    def _synced_at_ms(self) -> int:
        """E of the diff that got the book in sync (the first applied after its snapshot): the snapshotter
        closes its invalid period there, and samples the grid again from there."""
        return int((self.snapshotter.invalid_periods[-1].end - EPOCH) / dt.timedelta(milliseconds=1))

    def _synced(self, event_ms: int) -> None:
        self.state = SyncState.SYNCED
        self.ever_synced = True
        self._retry_delay = self._retry[0]
        self._last_unsynced = None
        if self.gap is not None:
            self._close_gap(event_ms)

    def _not_bridged(self, now: float) -> None:
        self.state = SyncState.WAITING
        self._back_off(now)
        start = self.last_good_ms if self.last_good_ms is not None else self.first_seen_ms
        if start is not None:
            self._open_gap(SNAPSHOT_RESYNC, {"snapshot_resyncs": 1}, start_ms=start)

    def _back_off(self, now: float) -> None:
        self.next_request_at = now + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self._retry[1])

    def _open_gap(self, reason: str, details: dict[str, Any], *, start_ms: int | None = None) -> None:
        if self.gap is not None:  # one gap per incident: what else happens is counted in it
            self.gap.count(f"{reason}s")
            return
        start_ms = self.last_good_ms if start_ms is None else start_ms
        if start_ms is None:
            start_ms = self.first_seen_ms or 0
        self.gap = Gap(self.symbol, from_epoch_ms(start_ms), reason, details=details)
        self._changed[self.gap.start_time] = self.gap

    def _close_gap(self, end_ms: int) -> None:
        gap, self.gap = self.gap, None
        end = from_epoch_ms(end_ms)
        if gap.reason == RESTART and end <= gap.start_time and not self._continues_open_gap:
            return  # the data does not continue the previous capture (a replay of older data): no gap
        gap.end_time = max(end, gap.start_time)
        self._changed[gap.start_time] = gap
