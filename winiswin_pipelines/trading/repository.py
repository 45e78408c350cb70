"""Trading in PostgreSQL: every query of the trading area.

- the recorder's writes: trade events into `trades` / `trade_partial_exits`, with orphan pairing
  and `position_entry_times` kept up to date, in one transaction per batch (async);
- the session journal: the session's heartbeat row (`trading_sessions`), its decisions
  (`trading_decisions`) and the OPEN trades a session resumes;
- order intents (`order_intents`): the write-ahead record of live entries, written before the order
  is sent and settled once its outcome is known;
- backtests: the stored bars per symbol and interval, and removing an earlier run's rows;
- funding rates (`funding_rates`): the history the `funding_rates` asset stores and sessions charge;
- reads: the backtest check's counts, a session's decisions and trades.

Each function takes the `DatabaseManager` and runs in a transaction of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from winiswin_pipelines.db.bulk import UpsertResult, copy_upsert, replace_row
from winiswin_pipelines.db.entry_times import async_delete_entry_time, async_upsert_entry_time, get_all_entry_times
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import (
    FundingRate,
    OrderIntent,
    Trade,
    TradeStatus,
    TradingDecision,
    TradingHalt,
    TradingSession,
    open_trade_sql,
)
from winiswin_pipelines.trading.risk import Position

LIVE_SOURCE = "live"  # the only source whose fill times are kept in position_entry_times

# -- the recorder's writes ---------------------------------------------------------------------------


async def write_trade_records(manager: DatabaseManager, source: str, records: Sequence[dict[str, Any]], *,
                              track_entry_times: bool) -> int:
    """Write trade event records (`TradeEvent.to_record()` dicts) of `source` in ONE transaction.

    Entries upsert on `trade_uid` and attach their orphans, partial exits upsert on `exit_uid`,
    closes and cancels update their trade; with `track_entry_times`, `position_entry_times` follows
    the earliest OPEN trade of `source` on each symbol the records touch. The last record of a key
    wins, as in a replay. Returns how many of the exits had no known entry (kept as orphans).
    """
    opened: dict[str, dict[str, Any]] = {}
    partials: dict[str, dict[str, Any]] = {}
    finishes: dict[str, dict[str, Any]] = {}
    for record in records:
        kind = record["kind"]
        if kind == "partial":
            partials[record["exit_uid"]] = record
        elif kind == "open":
            opened[record["trade_uid"]] = _json_safe(record)
        else:
            finishes[record["trade_uid"]] = _finish_row(record)
    orphans = 0
    async with manager.async_engine.begin() as conn:
        if opened:
            await conn.execute(_UPSERT_ENTRIES, _params(source, opened))
            await conn.execute(_ATTACH_ORPHAN_PARTIALS, {"uids": list(opened)})
            await conn.execute(_APPLY_ORPHAN_FINISHES, {"uids": list(opened)})
        if partials:
            orphans += (await conn.execute(_UPSERT_PARTIALS, _params(source, partials))).scalar_one()
        if finishes:
            orphans += (await conn.execute(_APPLY_FINISHES, _params(source, finishes))).scalar_one()
        if track_entry_times:
            await _sync_entry_times(conn, source, {record["symbol"] for record in records})
    return orphans


async def _sync_entry_times(conn: AsyncConnection, source: str, symbols: set[str]) -> None:
    # Only changed symbols are written, so a replay leaves the rows (and updated_at) untouched.
    rows = await conn.execute(_ENTRY_TIME_CHANGES, {"symbols": sorted(symbols), "source": source})
    for symbol, earliest_open in rows.all():
        if earliest_open is None:
            await async_delete_entry_time(conn, symbol)
        else:
            await async_upsert_entry_time(conn, symbol, earliest_open)


def _finish_row(record: dict[str, Any]) -> dict[str, Any]:
    """A close or a cancel as one shape: the columns of `trades` they set."""
    if record["kind"] == "close":
        return record
    return {"kind": "cancel", "trade_uid": record["trade_uid"], "symbol": record["symbol"],
            "exit_time": record["time"], "exit_reason": record["reason"], "status": TradeStatus.CANCELLED}


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """Features may hold NaN/inf (JSON has neither): they are stored as null."""
    features = record.get("features")
    if features:
        record = {**record, "features": _finite(features)}
    return record


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _params(source: str, rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {"source": source, "rows": json.dumps(list(rows.values()), separators=(",", ":"), default=str)}


_ENTRY_COLUMNS = (
    "symbol", "side", "is_virtual", "entry_time", "entry_price", "quantity", "leverage", "stop_loss",
    "take_profit", "strategy", "confidence", "win_probability", "features",
)
_UPSERT_ENTRIES = text(f"""
INSERT INTO trades AS t (trade_uid, status, source, {", ".join(_ENTRY_COLUMNS)})
SELECT r.trade_uid, '{TradeStatus.OPEN}', :source, {", ".join(f"r.{c}" for c in _ENTRY_COLUMNS)}
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
    trade_uid text, symbol text, side text, is_virtual boolean, entry_time timestamptz,
    entry_price float8, quantity float8, leverage float8, stop_loss float8, take_profit float8,
    strategy text, confidence float8, win_probability float8, features jsonb)
ON CONFLICT (trade_uid) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _ENTRY_COLUMNS)}, source = EXCLUDED.source, updated_at = now()
WHERE ({", ".join(f"t.{c}" for c in _ENTRY_COLUMNS)}, t.source)
    IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _ENTRY_COLUMNS)}, EXCLUDED.source)
""")

# Partial exits pair with their trade by trade_uid (and symbol); unmatched ones are kept as
# orphans (trade_uid NULL, the event in raw). Returns how many orphans the batch held.
_UPSERT_PARTIALS = text("""
WITH r AS (
    SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        kind text, exit_uid text, trade_uid text, symbol text, exit_time timestamptz, exit_price float8,
        quantity float8, pnl float8, pnl_pct float8, fees float8, reason text)
), paired AS (
    SELECT r.*, t.trade_uid AS known_uid
    FROM r LEFT JOIN trades t ON t.trade_uid = r.trade_uid AND t.symbol = r.symbol
), written AS (
    INSERT INTO trade_partial_exits AS p
        (exit_uid, trade_uid, symbol, exit_time, exit_price, quantity, pnl, pnl_pct, fees, reason, source, raw)
    SELECT exit_uid, known_uid, symbol, exit_time, exit_price, quantity, pnl, pnl_pct, fees, reason, :source,
           to_jsonb(paired) - 'known_uid'
    FROM paired
    ON CONFLICT (exit_uid) DO UPDATE SET
        trade_uid = COALESCE(EXCLUDED.trade_uid, p.trade_uid), symbol = EXCLUDED.symbol,
        exit_time = EXCLUDED.exit_time, exit_price = EXCLUDED.exit_price, quantity = EXCLUDED.quantity,
        pnl = EXCLUDED.pnl, pnl_pct = EXCLUDED.pnl_pct, fees = EXCLUDED.fees, reason = EXCLUDED.reason,
        source = EXCLUDED.source, raw = EXCLUDED.raw, updated_at = now()
    WHERE (p.trade_uid, p.exit_time, p.exit_price, p.quantity, p.pnl, p.pnl_pct, p.fees, p.reason, p.raw)
        IS DISTINCT FROM (COALESCE(EXCLUDED.trade_uid, p.trade_uid), EXCLUDED.exit_time, EXCLUDED.exit_price,
                          EXCLUDED.quantity, EXCLUDED.pnl, EXCLUDED.pnl_pct, EXCLUDED.fees, EXCLUDED.reason,
                          EXCLUDED.raw)
)
SELECT count(*) FROM paired WHERE known_uid IS NULL
""")

# Closes and cancels set the exit columns of their trade; unmatched ones become orphan rows.
_APPLY_FINISHES = text("""
WITH r AS (
    SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        kind text, trade_uid text, symbol text, exit_time timestamptz, exit_price float8, pnl float8,
        pnl_pct float8, fees float8, exit_reason text, status text)
), matched AS (
    SELECT r.trade_uid FROM r JOIN trades t ON t.trade_uid = r.trade_uid AND t.symbol = r.symbol
), updated AS (
    UPDATE trades t SET status = r.status, exit_time = r.exit_time, exit_price = r.exit_price, pnl = r.pnl,
        pnl_pct = r.pnl_pct, fees = r.fees, exit_reason = r.exit_reason, updated_at = now()
    FROM r
    WHERE t.trade_uid = r.trade_uid AND t.symbol = r.symbol
      AND (t.status, t.exit_time, t.exit_price, t.pnl, t.pnl_pct, t.fees, t.exit_reason)
          IS DISTINCT FROM (r.status, r.exit_time, r.exit_price, r.pnl, r.pnl_pct, r.fees, r.exit_reason)
), orphans AS (
    SELECT * FROM r WHERE r.trade_uid NOT IN (SELECT trade_uid FROM matched)
), kept AS (
    INSERT INTO trade_partial_exits AS p (exit_uid, trade_uid, symbol, exit_time, exit_price, pnl, pnl_pct, fees,
                                          reason, source, raw)
    SELECT trade_uid || ':' || kind, NULL, symbol, exit_time, exit_price, pnl, pnl_pct, fees, exit_reason,
           :source, to_jsonb(orphans)
    FROM orphans
    ON CONFLICT (exit_uid) DO UPDATE SET exit_time = EXCLUDED.exit_time, exit_price = EXCLUDED.exit_price,
        pnl = EXCLUDED.pnl, pnl_pct = EXCLUDED.pnl_pct, fees = EXCLUDED.fees, reason = EXCLUDED.reason,
        raw = EXCLUDED.raw, updated_at = now()
    WHERE p.raw IS DISTINCT FROM EXCLUDED.raw
)
SELECT count(*) FROM orphans
""")

# An entry recorded after its exits: attach orphan partial exits, apply an orphan close/cancel.
_ATTACH_ORPHAN_PARTIALS = text("""
UPDATE trade_partial_exits p SET trade_uid = t.trade_uid, updated_at = now()
FROM trades t
WHERE p.trade_uid IS NULL AND p.raw->>'kind' = 'partial' AND p.raw->>'trade_uid' = ANY(:uids)
  AND t.trade_uid = p.raw->>'trade_uid' AND t.symbol = p.symbol
""")
_APPLY_ORPHAN_FINISHES = text("""
WITH o AS (
    DELETE FROM trade_partial_exits p USING trades t
    WHERE p.trade_uid IS NULL AND p.raw->>'kind' IN ('close', 'cancel') AND p.raw->>'trade_uid' = ANY(:uids)
      AND t.trade_uid = p.raw->>'trade_uid' AND t.symbol = p.symbol
    RETURNING p.raw
)
UPDATE trades t SET status = o.raw->>'status', exit_time = (o.raw->>'exit_time')::timestamptz,
    exit_price = (o.raw->>'exit_price')::float8, pnl = (o.raw->>'pnl')::float8,
    pnl_pct = (o.raw->>'pnl_pct')::float8, fees = (o.raw->>'fees')::float8,
    exit_reason = o.raw->>'exit_reason', updated_at = now()
FROM o WHERE t.trade_uid = o.raw->>'trade_uid'
""")

# Per touched symbol: the earliest OPEN trade of this source, where it differs from what is stored.
_ENTRY_TIME_CHANGES = text(f"""
SELECT s.symbol, e.entry_time
FROM unnest(CAST(:symbols AS text[])) AS s(symbol)
LEFT JOIN (
    SELECT symbol, min(entry_time) AS entry_time FROM trades
    WHERE {open_trade_sql()} AND source = :source AND symbol = ANY(:symbols) AND entry_time IS NOT NULL
    GROUP BY symbol
) e USING (symbol)
LEFT JOIN position_entry_times p USING (symbol)
WHERE e.entry_time IS DISTINCT FROM p.entry_time
""")

# -- the session journal -----------------------------------------------------------------------------

# The columns of a decision row, in the order of the tuples `write_heartbeat` takes.
DECISION_COLUMNS = ("decision_uid", "session_id", "ts", "symbol", "action", "reason", "price", "trade_uid", "details")


def start_session(manager: DatabaseManager, session_id: str, *, run_id: str | None, mode: str,
                  details: dict[str, Any], at: dt.datetime) -> None:
    """The session's row, status "running" since `at` (a session started again starts afresh)."""
    values = {"session_id": session_id, "run_id": run_id, "mode": mode, "status": "running", "started_at": at,
              "last_heartbeat_at": at, "stopped_at": None, "ticks": 0, "details": details}
    with manager.engine.begin() as conn:
        replace_row(conn, TradingSession, values)


def write_heartbeat(manager: DatabaseManager, session_id: str, *, ticks: int, details: dict[str, Any],
                    status: str, at: dt.datetime, decisions: Sequence[tuple]) -> None:
    """The heartbeat at `at` and `decisions` (rows of DECISION_COLUMNS) in one transaction; a status
    other than "running" also marks the session stopped at `at`."""
    values: dict[str, Any] = {"last_heartbeat_at": at, "ticks": ticks, "details": details, "status": status}
    if status != "running":
        values["stopped_at"] = at
    with manager.engine.begin() as conn:
        if decisions:
            copy_upsert(conn, "trading_decisions", DECISION_COLUMNS, decisions, conflict_columns=["decision_uid"])
        conn.execute(update(TradingSession).where(TradingSession.session_id == session_id).values(**values))


def open_positions(manager: DatabaseManager, source: str) -> list[Position]:
    """OPEN trades of `source`; live positions are timed from position_entry_times (the fill time kept
    across restarts, written by live sessions only), paper and backtest ones from their own trades."""
    query = (select(Trade).where(Trade.status == TradeStatus.OPEN, Trade.source == source)
             .order_by(Trade.entry_time, Trade.trade_uid))
    with manager.session() as session:
        trades = session.scalars(query).all()
        entry_times = get_all_entry_times(session.connection()) if source == LIVE_SOURCE else {}
    return [
        Position(trade.trade_uid, trade.symbol, trade.side, trade.quantity, trade.entry_price,
                 entry_times.get(trade.symbol, trade.entry_time).astimezone(dt.UTC), trade.stop_loss,
                 trade.take_profit)
        for trade in trades
    ]


def realised_pnl_since(manager: DatabaseManager, source: str, since: dt.datetime) -> float:
    """Sum of the PnL of `source`'s trades closed since `since` (USDT)."""
    query = select(func.coalesce(func.sum(Trade.pnl), 0.0)).where(
        Trade.source == source, Trade.status != TradeStatus.OPEN, Trade.exit_time >= since)
    with manager.engine.connect() as conn:
        return float(conn.execute(query).scalar_one())


def trade_statuses(manager: DatabaseManager, trade_uids: Sequence[str]) -> dict[str, str]:
    """trade_uid -> status of those of `trade_uids` PostgreSQL holds."""
    if not trade_uids:
        return {}
    with manager.session() as session:
        rows = session.execute(select(Trade.trade_uid, Trade.status).where(Trade.trade_uid.in_(list(trade_uids))))
        return {uid: TradeStatus(status).value for uid, status in rows}


def session_trades(manager: DatabaseManager, session_id: str) -> tuple[list[TradingDecision], list[Trade]]:
    """A session's decisions (in order) and the trades it entered (by trade_uid)."""
    entered = select(TradingDecision.trade_uid).where(TradingDecision.session_id == session_id,
                                                      TradingDecision.action == "enter")
    with manager.session() as session:
        decisions = session.scalars(select(TradingDecision).where(TradingDecision.session_id == session_id)
                                    .order_by(TradingDecision.decision_uid)).all()
        trades = session.scalars(select(Trade).where(Trade.trade_uid.in_(entered)).order_by(Trade.trade_uid)).all()
    return list(decisions), list(trades)


# -- order intents -----------------------------------------------------------------------------------

UNSETTLED_INTENTS = ("pending", "filled")  # an entry whose position may be on the exchange


def add_order_intent(manager: DatabaseManager, *, client_id: str, trade_uid: str, session_id: str, mode: str,
                     symbol: str, side: str, quantity: float, details: dict[str, Any]) -> None:
    """The intent of an entry, status pending, committed before its order is sent (kept if already there)."""
    values = {"client_id": client_id, "trade_uid": trade_uid, "session_id": session_id, "mode": mode,
              "symbol": symbol, "side": side, "quantity": quantity, "status": "pending",
              "details": _finite(details)}
    with manager.engine.begin() as conn:
        conn.execute(pg_insert(OrderIntent).values(**values).on_conflict_do_nothing(index_elements=["client_id"]))


def set_order_intent_status(manager: DatabaseManager, trade_uid: str, status: str) -> None:
    with manager.engine.begin() as conn:
        conn.execute(update(OrderIntent).where(OrderIntent.trade_uid == trade_uid, OrderIntent.status != status)
                     .values(status=status, updated_at=func.now()))


def unsettled_order_intents(manager: DatabaseManager, mode: str) -> dict[str, dict[str, Any]]:
    """trade_uid -> intent (its columns and details) of `mode`'s intents still pending or filled, oldest first."""
    query = (select(OrderIntent).where(OrderIntent.mode == mode, OrderIntent.status.in_(UNSETTLED_INTENTS))
             .order_by(OrderIntent.created_at, OrderIntent.client_id))
    with manager.session() as session:
        return {
            intent.trade_uid: {**(intent.details or {}), "client_id": intent.client_id, "symbol": intent.symbol,
                               "side": intent.side, "quantity": intent.quantity, "status": intent.status}
            for intent in session.scalars(query)
        }


# -- halts and what Dagster observes of live trading ---------------------------------------------------


def add_halt(manager: DatabaseManager, reason: str, *, started_at: dt.datetime, cleared_at: dt.datetime | None,
             details: dict[str, Any]) -> int:
    """A new `trading_halts` row; returns its id."""
    values = {"reason": reason, "started_at": started_at, "cleared_at": cleared_at, "details": _finite(details)}
    with manager.engine.begin() as conn:
        return conn.execute(pg_insert(TradingHalt).values(**values).returning(TradingHalt.id)).scalar_one()


def halts_in_force(manager: DatabaseManager, now: dt.datetime) -> list[dict[str, Any]]:
    """The halts started by `now` and not cleared by then, oldest first (as `halts.Halt` fields)."""
    query = (select(TradingHalt).where(TradingHalt.started_at <= now,
                                       (TradingHalt.cleared_at.is_(None)) | (TradingHalt.cleared_at > now))
             .order_by(TradingHalt.started_at, TradingHalt.id))
    with manager.session() as session:
        return [{"id": h.id, "reason": h.reason, "started_at": h.started_at, "cleared_at": h.cleared_at,
                 "details": h.details or {}} for h in session.scalars(query)]


def clear_halts(manager: DatabaseManager, halt_ids: Sequence[int], at: dt.datetime) -> None:
    if halt_ids:
        with manager.engine.begin() as conn:
            conn.execute(update(TradingHalt).where(TradingHalt.id.in_(list(halt_ids))).values(cleared_at=at))


def peak_live_equity(manager: DatabaseManager, drawdown_reason: str) -> float | None:
    """The highest `peak_equity` live sessions wrote in their heartbeat since the last halt of
    `drawdown_reason` was cleared (None: none written)."""
    last_cleared = (select(func.max(TradingHalt.cleared_at))
                    .where(TradingHalt.reason == drawdown_reason, TradingHalt.cleared_at <= func.now())
                    .scalar_subquery())
    peak = TradingSession.details["peak_equity"].astext.cast(DOUBLE_PRECISION)
    query = select(func.max(peak)).where(
        TradingSession.mode == "live",
        TradingSession.last_heartbeat_at >= func.coalesce(last_cleared, dt.datetime(1970, 1, 1, tzinfo=dt.UTC)))
    with manager.engine.connect() as conn:
        value = conn.execute(query).scalar_one()
    return None if value is None else float(value)


def latest_session(manager: DatabaseManager, mode: str) -> TradingSession | None:
    """The most recently started session of `mode` (its heartbeat and last reconciliation)."""
    query = select(TradingSession).where(TradingSession.mode == mode).order_by(TradingSession.started_at.desc())
    with manager.session() as session:
        return session.scalars(query.limit(1)).first()


def open_trade_symbols(manager: DatabaseManager, source: str) -> list[str]:
    query = select(Trade.symbol).where(Trade.status == TradeStatus.OPEN, Trade.source == source).order_by(Trade.symbol)
    with manager.engine.connect() as conn:
        return list(conn.execute(query).scalars())


# -- backtests ---------------------------------------------------------------------------------------


def delete_sessions(manager: DatabaseManager, *, source: str, prefix: str) -> None:
    """Remove the sessions whose ids start with `prefix`: their rows, decisions and trades of `source`
    (trade uids start with the session id)."""
    with manager.engine.begin() as conn:
        conn.execute(delete(Trade).where(Trade.source == source, Trade.trade_uid.startswith(prefix)))
        conn.execute(delete(TradingDecision).where(TradingDecision.session_id.startswith(prefix)))
        conn.execute(delete(TradingSession).where(TradingSession.session_id.startswith(prefix)))


def count_trades_closed_within(manager: DatabaseManager, *, source: str, start: dt.datetime,
                               end: dt.datetime) -> tuple[int, int]:
    """(trades of `source` entered in [start, end), of which not CLOSED with a PnL and an exit
    between their entry and `end`)."""
    entered = (Trade.source == source) & (Trade.entry_time >= start) & (Trade.entry_time < end)
    closed_within = ((Trade.status == TradeStatus.CLOSED) & Trade.pnl.is_not(None)
                     & (Trade.exit_time >= Trade.entry_time) & (Trade.exit_time <= end))
    with manager.engine.connect() as conn:
        total, bad = conn.execute(select(func.count(), func.count().filter(~closed_within)).where(entered)).one()
    return total, bad


# -- funding rates -----------------------------------------------------------------------------------

FUNDING_COLUMNS = ("symbol", "funding_time", "funding_rate", "mark_price")


def write_funding_rates(manager: DatabaseManager, rows: Sequence[tuple]) -> UpsertResult:
    """Upsert funding events (rows of FUNDING_COLUMNS) keyed by (symbol, funding_time), in one transaction."""
    with manager.engine.begin() as conn:
        return copy_upsert(conn, "funding_rates", FUNDING_COLUMNS, rows, conflict_columns=["symbol", "funding_time"])


def read_funding_rates(manager: DatabaseManager, symbols: Sequence[str], start: dt.datetime,
                       end: dt.datetime) -> list[tuple[str, dt.datetime, float, float | None]]:
    """(symbol, funding_time, funding_rate, mark_price) of `symbols` in [start, end), in time order."""
    query = (select(FundingRate.symbol, FundingRate.funding_time, FundingRate.funding_rate, FundingRate.mark_price)
             .where(FundingRate.symbol.in_(list(symbols)), FundingRate.funding_time >= start,
                    FundingRate.funding_time < end)
             .order_by(FundingRate.funding_time, FundingRate.symbol))
    with manager.engine.connect() as conn:
        return [(symbol, time.astimezone(dt.UTC), rate, mark) for symbol, time, rate, mark in conn.execute(query)]
