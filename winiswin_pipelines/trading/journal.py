"""The session's own rows in PostgreSQL: heartbeats (`trading_sessions`) and decisions (`trading_decisions`).

A session writes one heartbeat row it keeps updating and its decisions in batches, instead of a
Dagster log line per tick. It also reads back the positions a previous session left open, with
the fill times the time stop counts from (`position_entry_times`). Methods are synchronous (the
session calls them from a worker thread so the loop never waits on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from winiswin_pipelines.db.bulk import copy_upsert
from winiswin_pipelines.db.entry_times import get_all_entry_times
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import Trade, TradingSession
from winiswin_pipelines.trading.risk import Position

DECISION_COLUMNS = ("decision_uid", "session_id", "ts", "symbol", "action", "reason", "price", "trade_uid", "details")


@dataclass(frozen=True)
class Decision:
    """What the session decided about one symbol at one time, and why."""

    ts: dt.datetime
    symbol: str
    action: str  # enter, exit, skip, resume
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
        now = dt.datetime.now(dt.UTC)
        values = {"session_id": self.session_id, "run_id": self.run_id, "mode": self.mode, "status": "running",
                  "started_at": now, "last_heartbeat_at": now, "stopped_at": None, "ticks": 0, "details": details}
        statement = insert(TradingSession).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=[TradingSession.session_id],
            set_={k: statement.excluded[k] for k in values if k != "session_id"},
        )
        with self.manager.engine.begin() as conn:
            conn.execute(statement)

    def add(self, decision: Decision) -> None:
        uid = f"{self.session_id}:{self._written + len(self._pending):07d}"
        self._pending.append((uid, self.session_id, decision.ts, decision.symbol, decision.action, decision.reason,
                              decision.price, decision.trade_uid, decision.details or None))

    def heartbeat(self, ticks: int, details: dict[str, Any], *, status: str = "running") -> None:
        """Write pending decisions and the heartbeat in one transaction."""
        now = dt.datetime.now(dt.UTC)
        values: dict[str, Any] = {"last_heartbeat_at": now, "ticks": ticks, "details": details, "status": status}
        if status != "running":
            values["stopped_at"] = now
        with self.manager.engine.begin() as conn:
            if self._pending:
                copy_upsert(conn, "trading_decisions", DECISION_COLUMNS, self._pending,
                            conflict_columns=["decision_uid"])
            conn.execute(update(TradingSession).where(TradingSession.session_id == self.session_id).values(**values))
        self._written += len(self._pending)
        self._pending = []

    def open_positions(self, source: str) -> list[Position]:
        """OPEN trades of `source`, timed from position_entry_times (the fill time kept across restarts)."""
        query = select(Trade).where(Trade.status == "OPEN", Trade.source == source).order_by(Trade.entry_time,
                                                                                            Trade.trade_uid)
        with self.manager.session() as session:
            trades = session.scalars(query).all()
            entry_times = get_all_entry_times(session.connection())
        return [
            Position(trade.trade_uid, trade.symbol, trade.side, trade.quantity, trade.entry_price,
                     entry_times.get(trade.symbol, trade.entry_time).astimezone(dt.UTC), trade.stop_loss,
                     trade.take_profit)
            for trade in trades
        ]
