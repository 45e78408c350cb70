"""Account safety that persists: halts in PostgreSQL (max drawdown, daily loss limit, flatten_and_halt),
the supervisor held back while one is in force, clearing it, and entries within MARKET_LOT_SIZE; against
the local Binance server and a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import dagster as dg
import pytest

from winiswin_pipelines.db.models import TradeStatus
from winiswin_pipelines.defs.trading import clear_trading_halt, flatten_and_halt_job
from winiswin_pipelines.resources import PostgresResource
from winiswin_pipelines.trading import halts
from winiswin_pipelines.trading.risk import RiskConfig
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines_tests.binance_server import MARKET_MAX_QTY
from winiswin_pipelines_tests.trading_helpers import (
    KEEP_OPEN,
    REPLAY,
    SYMBOLS,
    MarkFeed,
    by_hand,
    live_env,
    live_trades,
    lost_today,
    quiet,
    supervisor_tick,
)


def test_a_halt_is_in_force_until_cleared_or_its_end(db):
    now = dt.datetime.now(dt.UTC)
    open_ended = halts.halt_trading(db, halts.FLATTEN_AND_HALT, details={"note": "by hand"})
    assert halts.halt_trading(db, halts.FLATTEN_AND_HALT) == open_ended  # one is enough
    lifted = halts.halt_trading(db, halts.DAILY_LOSS_LIMIT, until=now - dt.timedelta(seconds=1),
                                now=now - dt.timedelta(hours=1))
    until_midnight = halts.halt_trading(db, halts.DAILY_LOSS_LIMIT, until=halts.next_utc_midnight(now))
    in_force = halts.halts_in_force(db)
    assert [h.id for h in in_force] == [open_ended.id, until_midnight.id] and lifted.id not in [h.id for h in in_force]
    assert [h.blocks_sessions for h in in_force] == [True, False]
    assert in_force[0].details == {"note": "by hand"} and in_force[0].started_at.tzinfo is not None
    assert [h.id for h in halts.clear_halts(db, reason=halts.FLATTEN_AND_HALT)] == [open_ended.id]
    assert [h.id for h in halts.halts_in_force(db)] == [until_midnight.id]
    assert halts.halts_in_force(db, now=halts.next_utc_midnight(now)) == []  # it lifts itself at 00:00 UTC


def test_a_halt_stops_live_entries_and_the_supervisor_until_cleared(db, database_url, server, capture_events,
                                                                  dagster_instance, monkeypatch):
    live_env(monkeypatch, server)
    monkeypatch.setenv("DATABASE_URL", database_url)
    halts.halt_trading(db, halts.FLATTEN_AND_HALT)
    skip = supervisor_tick(dagster_instance)
    assert isinstance(skip, dg.SkipReason) and "live trading halted: flatten_and_halt" in skip.skip_message
    result = run_session(db, session_id="halted", mode="live", feed=MarkFeed(capture_events, server),
                         config=KEEP_OPEN, symbols=SYMBOLS, rest_url=server.rest_url)
    assert [d for d in result.decisions if d.action == "enter"] == [] and server.orders == []
    assert any(d.reason.startswith("trading halted: flatten_and_halt") for d in result.decisions if d.action == "skip")
    clear_trading_halt.execute_in_process(resources={"postgres": PostgresResource(database_url=database_url)},
                                          instance=dagster_instance)
    assert halts.halts_in_force(db) == []
    assert [r.run_key for r in supervisor_tick(dagster_instance).run_requests] == [
        f"live-{dt.datetime.now(dt.UTC):%Y-%m-%d}-a1"]


def test_max_drawdown_closes_everything_and_halts_across_restarts(db, server, monkeypatch):
    live_env(monkeypatch, server)
    by_hand(server, "ETHUSDT", "BUY", "0.500")
    config = replace(KEEP_OPEN, risk=RiskConfig(max_drawdown=0.1))
    first = run_session(db, session_id="dd-1", mode="live", feed=MarkFeed(quiet(), server), config=config,
                        symbols=SYMBOLS, rest_url=server.rest_url)
    assert first.status == "completed" and halts.peak_equity(db) == pytest.approx(10_000.0, abs=1.0)
    server.set_account(wallet=8_500.0)  # 15% below the peak the first session saw
    second = run_session(db, session_id="dd-2", mode="live", feed=MarkFeed(quiet(), server), config=config,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    assert second.status == "halted"
    [halt] = [d for d in second.decisions if d.action == "halt"]
    assert halt.details["reason"] == "max_drawdown" and "below its peak" in halt.reason
    assert [(c.symbol, c.exit_reason) for c in second.closed] == [("ETHUSDT", "max_drawdown")]
    assert server.position_amount("ETHUSDT") == 0.0 and server.open_algo_orders() == []
    [trade] = live_trades(db)
    assert (trade.status, trade.exit_reason) == (TradeStatus.CLOSED, "max_drawdown")
    [in_force] = halts.halts_in_force(db)
    assert (in_force.reason, in_force.cleared_at, in_force.details["peak_equity"]) == (
        "max_drawdown", None, pytest.approx(10_000.0, abs=1.0))
    # A restart stays halted; clearing the halt starts a new peak.
    third = run_session(db, session_id="dd-3", mode="live", feed=MarkFeed(quiet(), server), config=config,
                        symbols=SYMBOLS, rest_url=server.rest_url)
    assert third.status == "halted" and len(halts.halts_in_force(db)) == 1
    halts.clear_halts(db)
    assert halts.peak_equity(db) is None
    fourth = run_session(db, session_id="dd-4", mode="live", feed=MarkFeed(quiet(), server), config=config,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    assert fourth.status == "completed" and halts.halts_in_force(db) == []


def test_the_daily_loss_limit_is_a_halt_until_midnight(db, database_url, server, capture_events, dagster_instance,
                                                       monkeypatch):
    lost_today(db)
    live_env(monkeypatch, server)
    monkeypatch.setenv("DATABASE_URL", database_url)
    config = replace(REPLAY, risk=RiskConfig(daily_loss_limit=500.0))
    result = run_session(db, session_id="daily", mode="live", feed=MarkFeed(capture_events, server), config=config,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    assert server.orders == [] and [d.action for d in result.decisions].count("halt") == 1
    [halt] = halts.halts_in_force(db)
    assert (halt.reason, halt.cleared_at) == ("daily_loss_limit", halts.next_utc_midnight(dt.datetime.now(dt.UTC)))
    assert halt.details["realised_today"] == -600.0
    assert supervisor_tick(dagster_instance).run_requests  # sessions still start: they watch, they do not enter


def test_flatten_and_halt_closes_every_position_and_cancels_its_protection(db, database_url, server,
                                                                          dagster_instance, monkeypatch):
    live_env(monkeypatch, server)
    monkeypatch.setenv("DATABASE_URL", database_url)
    by_hand(server, "ETHUSDT", "BUY", "0.500")
    run_session(db, session_id="before-flatten", mode="live", feed=MarkFeed(quiet(), server), config=KEEP_OPEN,
                symbols=SYMBOLS, rest_url=server.rest_url)  # adopts and protects ETH
    by_hand(server, "BTCUSDT", "SELL", "0.010")  # and one no session knows yet
    assert len(server.open_algo_orders()) == 2
    postgres = PostgresResource(database_url=database_url)
    result = flatten_and_halt_job.execute_in_process(
        run_config={"ops": {"flatten_positions_and_halt": {"config": {"rest_url": server.rest_url,
                                                                      "note": "test"}}}},
        resources={"postgres": postgres}, instance=dagster_instance)
    assert result.success
    assert [server.position_amount(s) for s in SYMBOLS] == [0.0, 0.0] and server.open_algo_orders() == []
    stored = live_trades(db)
    assert sorted((t.symbol, t.status, t.exit_reason) for t in stored) == [
        ("BTCUSDT", TradeStatus.CLOSED, "flatten_and_halt"), ("ETHUSDT", TradeStatus.CLOSED, "flatten_and_halt")]
    assert all(t.exit_price > 0 and t.fees > 0 for t in stored)
    [halt] = halts.halts_in_force(db)
    assert (halt.reason, halt.blocks_sessions, halt.details["note"]) == ("flatten_and_halt", True, "test")
    assert isinstance(supervisor_tick(dagster_instance), dg.SkipReason)
    assert flatten_and_halt_job.tags["dagster/priority"] == "20"
    clear_trading_halt.execute_in_process(
        run_config={"ops": {"clear_halts": {"config": {"reason": "flatten_and_halt"}}}},
        resources={"postgres": postgres}, instance=dagster_instance)
    assert supervisor_tick(dagster_instance).run_requests


def test_flatten_and_halt_without_live_keys_still_records_the_halt(db, database_url, dagster_instance, monkeypatch):
    for name in ("BINANCE_API_KEY", "BINANCE_API_SECRET", "WINISWIN_LIVE_TRADING"):
        monkeypatch.delenv(name, raising=False)
    result = flatten_and_halt_job.execute_in_process(
        resources={"postgres": PostgresResource(database_url=database_url)}, instance=dagster_instance,
        raise_on_error=False)
    assert not result.success
    [halt] = halts.halts_in_force(db)
    assert halt.reason == "flatten_and_halt"


def test_live_entries_stay_within_the_market_lot_size(db, server, capture_events, monkeypatch):
    live_env(monkeypatch, server)
    server.set_account(wallet=50_000_000.0)  # sizing alone would ask for far more than one MARKET order may hold
    config = replace(KEEP_OPEN, risk=RiskConfig(max_leverage=20.0))
    result = run_session(db, session_id="big", mode="live", feed=MarkFeed(capture_events, server), config=config,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    entries = [o for o in server.orders if o["newClientOrderId"].startswith("wnen-")]
    assert len(entries) == 2 and all(float(o["quantity"]) == MARKET_MAX_QTY for o in entries)
    assert [d for d in result.decisions if d.action == "reject"] == []
    assert sorted(abs(server.position_amount(s)) for s in SYMBOLS) == [MARKET_MAX_QTY, MARKET_MAX_QTY]
