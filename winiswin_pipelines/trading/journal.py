"""The session's own rows in PostgreSQL: heartbeats (`trading_sessions`), decisions (`trading_decisions`)
and the write-ahead record of live entries (`order_intents`).

A session writes one heartbeat row it keeps updating and its decisions in batches, instead of a
Dagster log line per tick. It also reads back the positions a previous session left open, with
the fill times the time stop counts from (`position_entry_times`). Methods are synchronous (the
session calls them from a worker thread so the loop never waits on PostgreSQL); the SQL is in
`repository`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.trading import halts, repository
from winiswin_pipelines.trading.risk import Position


@dataclass(frozen=True)
class Decision:
    """What the session decided about one symbol at one time, and why."""

    ts: dt.datetime
    symbol: str
    action: str  # enter, exit, skip, resume, reject (an order refused: its code and message), protect
    reason: str
    price: float | None = None
    trade_uid: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class SessionJournal:
    def __init__(self, manager: DatabaseManager, session_id: str, mode: str, run_id: str | None = None):
        self.manager = manager
        self.session_id = session_id
        self.mode = mode
        self.run_id = run_id
        self._pending: list[tuple] = []
        self._written = 0

    @property
    def pending(self) -> int:
        """Decisions not written yet."""
        return len(self._pending)

    def start(self, details: dict[str, Any]) -> None:
        repository.start_session(self.manager, self.session_id, run_id=self.run_id, mode=self.mode, details=details,
                                 at=dt.datetime.now(dt.UTC))

    def add(self, decision: Decision) -> None:
        uid = f"{self.session_id}:{self._written + len(self._pending):07d}"
        # A row of repository.DECISION_COLUMNS.
        self._pending.append((uid, self.session_id, decision.ts, decision.symbol, decision.action, decision.reason,
                              decision.price, decision.trade_uid, decision.details or None))

    def heartbeat(self, ticks: int, details: dict[str, Any], *, status: str = "running") -> None:
        """Write pending decisions and the heartbeat in one transaction."""
        repository.write_heartbeat(self.manager, self.session_id, ticks=ticks, details=details, status=status,
                                   at=dt.datetime.now(dt.UTC), decisions=self._pending)
        self._written += len(self._pending)
        self._pending = []

    def trade_statuses(self, trade_uids: list[str]) -> dict[str, str]:
        """The status of those of `trade_uids` PostgreSQL holds (OPEN, CLOSED, ...)."""
        return repository.trade_statuses(self.manager, trade_uids)

    def realised_today(self, source: str) -> float:
        """PnL of `source`'s trades closed since 00:00 UTC (the daily loss limit survives restarts)."""
        midnight = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return repository.realised_pnl_since(self.manager, source, midnight)

    def open_positions(self, source: str) -> list[Position]:
        """OPEN trades of `source`, timed from position_entry_times (the fill time kept across restarts)."""
        return repository.open_positions(self.manager, source)

    def halts_in_force(self) -> list[halts.Halt]:
        return halts.halts_in_force(self.manager)

    def halt(self, reason: str, until: dt.datetime | None, details: dict[str, Any]) -> halts.Halt:
        return halts.halt_trading(self.manager, reason, until=until, details={"session_id": self.session_id, **details})

    def peak_equity(self) -> float | None:
        """The live account's peak equity since the last max-drawdown halt was cleared (`halts.peak_equity`)."""
        return halts.peak_equity(self.manager)


class OrderIntents:
    """The write-ahead record of one mode's entries (`order_intents`): an intent is committed before
    its order is sent, so a session that starts after a crash can look the order up by its client id."""

    def __init__(self, manager: DatabaseManager, mode: str, session_id: str):
        self.manager = manager
        self.mode = mode
        self.session_id = session_id

    def add(self, trade_uid: str, entry: dict[str, Any], quantity: float) -> None:
        """Commit the intent (status pending); raises when PostgreSQL is unreachable: then send nothing."""
        details = {k: v for k, v in entry.items() if k not in ("client_id", "symbol", "side")}
        repository.add_order_intent(self.manager, client_id=entry["client_id"], trade_uid=trade_uid,
                                    session_id=self.session_id, mode=self.mode, symbol=entry["symbol"],
                                    side=entry["side"], quantity=quantity, details=details)

    def settle(self, trade_uid: str, status: str) -> None:
        """filled, closed, rejected or unfilled."""
        repository.set_order_intent_status(self.manager, trade_uid, status)

    def unsettled(self) -> dict[str, dict[str, Any]]:
        """trade_uid -> entry (as given to `add`, with client_id, symbol, side, quantity, status) of the
        intents still pending or filled."""
        return repository.unsettled_order_intents(self.manager, self.mode)
