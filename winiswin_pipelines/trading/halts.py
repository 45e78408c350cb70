"""Halts of live trading, kept in PostgreSQL (`trading_halts`) so they survive restarts.

A halt is in force from its start until it is cleared: `cleared_at` NULL means until someone clears
it (`clear_trading_halt`), a time means it lifts itself then. While any halt is in force a live
session sends no entry (its positions stay watched and protected); while an open-ended one is in
force the supervisor starts no live session either.

- `max_drawdown`: the account's equity fell `RiskConfig.max_drawdown` below its peak; the session
  closes every position and ends. Open-ended.
- `daily_loss_limit`: today's closed trades lost `RiskConfig.daily_loss_limit`; lifts at 00:00 UTC.
- `flatten_and_halt`: asked for by hand (the job of that name closes everything first). Open-ended.

The peak equity a drawdown is measured from is the highest a live session reported in its heartbeat
since the last max-drawdown halt was cleared (clearing it starts a new peak).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.trading import repository

MAX_DRAWDOWN = "max_drawdown"
DAILY_LOSS_LIMIT = "daily_loss_limit"
FLATTEN_AND_HALT = "flatten_and_halt"


@dataclass(frozen=True)
class Halt:
    id: int
    reason: str
    started_at: dt.datetime
    cleared_at: dt.datetime | None  # None: until cleared by hand
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks_sessions(self) -> bool:
        """An open-ended halt keeps the supervisor from starting live sessions."""
        return self.cleared_at is None

    def describe(self) -> str:
        until = "until cleared" if self.cleared_at is None else f"until {self.cleared_at.isoformat()}"
        return f"{self.reason} since {self.started_at.isoformat()} ({until})"


def next_utc_midnight(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.astimezone(dt.UTC).date() + dt.timedelta(days=1), dt.time(), dt.UTC)


def halt_trading(manager: DatabaseManager, reason: str, *, until: dt.datetime | None = None,
                 details: dict[str, Any] | None = None, now: dt.datetime | None = None) -> Halt:
    """Record a halt in force from now (`until` None: until cleared); an identical one in force is kept."""
    now = now or dt.datetime.now(dt.UTC)
    same = [h for h in halts_in_force(manager, now) if h.reason == reason and h.cleared_at == until]
    if same:
        return same[0]
    halt_id = repository.add_halt(manager, reason, started_at=now, cleared_at=until, details=details or {})
    return Halt(halt_id, reason, now, until, details or {})


def halts_in_force(manager: DatabaseManager, now: dt.datetime | None = None) -> list[Halt]:
    return [Halt(**row) for row in repository.halts_in_force(manager, now or dt.datetime.now(dt.UTC))]


def clear_halts(manager: DatabaseManager, *, reason: str | None = None, now: dt.datetime | None = None) -> list[Halt]:
    """Clear the halts in force (of `reason`, or all) as of now; returns them as they were."""
    now = now or dt.datetime.now(dt.UTC)
    cleared = [h for h in halts_in_force(manager, now) if reason is None or h.reason == reason]
    repository.clear_halts(manager, [h.id for h in cleared], now)
    return cleared


def peak_equity(manager: DatabaseManager) -> float | None:
    """The highest equity a live session reported since the last max-drawdown halt was cleared."""
    return repository.peak_live_equity(manager, MAX_DRAWDOWN)
