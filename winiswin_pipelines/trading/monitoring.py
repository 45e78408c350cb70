"""What Dagster shows of live trading: the positions of the last reconciliation and the heartbeat.

A live session reconciles with the exchange every minute and keeps the result in its heartbeat row
(`trading_sessions.details.reconciliation`): each position with its entry, mark price, unrealised PnL
and the conditional orders protecting it on the exchange. `live_view` reads that back with the
heartbeat's age, the OPEN live trades and the halts in force, without calling the exchange (no keys
and no request weight outside the session). `heartbeat_problem` says when the heartbeat has been
silent too long while there is something to watch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.trading import halts, repository

HEARTBEAT_MAX_SILENCE = dt.timedelta(minutes=3)


@dataclass(frozen=True)
class LiveView:
    now: dt.datetime
    session_id: str | None = None
    status: str | None = None  # running, or how the session ended
    last_heartbeat_at: dt.datetime | None = None
    reconciliation: dict[str, Any] = field(default_factory=dict)  # the last one the session wrote
    open_trades: list[str] = field(default_factory=list)  # symbols of the OPEN live trades in PostgreSQL
    halts: list[str] = field(default_factory=list)

    @property
    def heartbeat_age(self) -> dt.timedelta | None:
        return None if self.last_heartbeat_at is None else self.now - self.last_heartbeat_at

    @property
    def positions(self) -> dict[str, dict[str, Any]]:
        return self.reconciliation.get("position_details") or {}


def live_view(manager: DatabaseManager, now: dt.datetime | None = None) -> LiveView:
    now = now or dt.datetime.now(dt.UTC)
    session = repository.latest_session(manager, "live")
    in_force = [halt.describe() for halt in halts.halts_in_force(manager, now)]
    open_trades = repository.open_trade_symbols(manager, "live")
    if session is None:
        return LiveView(now, open_trades=open_trades, halts=in_force)
    return LiveView(now, session.session_id, session.status, session.last_heartbeat_at,
                    (session.details or {}).get("reconciliation") or {}, open_trades, in_force)


def heartbeat_problem(view: LiveView, max_silence: dt.timedelta = HEARTBEAT_MAX_SILENCE) -> str | None:
    """Why the heartbeat is a worry: a session marked running, or live positions open, and no heartbeat
    within `max_silence`. None when it is fresh, or when nothing live is running or held."""
    watched = view.status == "running" or bool(view.open_trades)
    age = view.heartbeat_age
    if not watched or (age is not None and age <= max_silence):
        return None
    silence = "no live session has written a heartbeat" if age is None else \
        f"the last heartbeat ({view.session_id}) is {age.total_seconds():.0f} s old"
    what = f"live positions open ({', '.join(view.open_trades)})" if view.open_trades else "a session marked running"
    return f"{silence}, more than {max_silence.total_seconds():.0f} s, with {what}"


def positions_table(view: LiveView) -> str:
    """The positions as a Markdown table: amount, entry, mark, unrealised PnL and protection."""
    if not view.positions:
        return "no position on the exchange at the last reconciliation"
    rows = ["| symbol | amount | entry | mark | unrealised PnL (USDT) | protection on the exchange |",
            "|---|---|---|---|---|---|"]
    for symbol, position in sorted(view.positions.items()):
        protection = ", ".join(f"{o['type']} @ {o['trigger_price']:g}" + ("" if o.get("ours") else " (not ours)")
                               for o in position.get("protection", [])) or "**none**"
        rows.append(f"| {symbol} | {position['amount']:g} | {position['entry_price']:g} | "
                    f"{position['mark_price']:g} | {position['unrealised_pnl']:+.2f} | {protection} |")
    return "\n".join(rows)


def unprotected(view: LiveView) -> list[str]:
    """Symbols whose position had no stop on the exchange at the last reconciliation."""
    return sorted(symbol for symbol, position in view.positions.items()
                  if not any(o.get("type") == "STOP_MARKET" for o in position.get("protection", [])))
