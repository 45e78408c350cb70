"""Protection that stays: a live session killed with SIGKILL mid-position and restarted leaves every
position with exactly one stop on the exchange and no entry sent twice; a stop or take profit the
exchange expires or rejects is placed again (with back-off while that fails). Against the local
Binance server and a real PostgreSQL; the killed session is a real child process.

Run as a module, this file is that child: `python -m winiswin_pipelines_tests.test_trading_crash
<database url> <rest url> <session id>` trades the bundled capture live, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import TradeStatus
from winiswin_pipelines.marketdata.feed import BookEvent, ReplayFeed
from winiswin_pipelines.settings import PROJECT_DIR
from winiswin_pipelines.trading.orders import client_order_id
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines_tests.binance_server import LocalBinanceServer
from winiswin_pipelines_tests.trading_helpers import (
    KEEP_OPEN,
    SYMBOLS,
    T0,
    ListFeed,
    MarkFeed,
    book,
    by_hand,
    live_env,
    live_trades,
    quiet,
    session_actions,
)

ALGO_ORDER = "/fapi/v1/algoOrder"


def first_mids(events) -> dict[str, float]:
    """Each symbol's first mid price in the capture: where the exchange's mark price sits."""
    mids: dict[str, float] = {}
    for event in events:
        if isinstance(event, BookEvent) and event.best_bid and event.symbol not in mids:
            mids[event.symbol] = round((event.best_bid + event.best_ask) / 2, 1)
    return mids


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.001)
    return False


def start_child(database_url: str, server: LocalBinanceServer, session_id: str) -> subprocess.Popen:
    env = {**os.environ, "BINANCE_API_KEY": server.api_key, "BINANCE_API_SECRET": server.api_secret,
           "WINISWIN_LIVE_TRADING": "1"}
    return subprocess.Popen([sys.executable, "-m", "winiswin_pipelines_tests.test_trading_crash", database_url,
                             server.rest_url, session_id], cwd=PROJECT_DIR, env=env)


KILL_POINTS = {
    # The entry has filled on the exchange: its protection may not be placed yet.
    "after_the_fill": lambda server: any(server.position_amount(s) for s in SYMBOLS),
    # The stop and take profit are on the exchange: the recorder may not have written the trade yet.
    "after_the_protection": lambda server: any(len(server.open_algo_orders(s)) == 2 for s in SYMBOLS),
}


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_after_kill_9_mid_position_every_position_has_one_stop_and_no_entry_is_sent_twice(
        db, database_url, capture_events, monkeypatch, kill_point):
    with LocalBinanceServer(tuple(SYMBOLS)) as server:
        marks = first_mids(capture_events)
        for symbol, price in marks.items():
            server.set_mark_price(symbol, price)
        child = start_child(database_url, server, "crashing")
        try:
            assert wait_for(lambda: KILL_POINTS[kill_point](server), timeout=120), "the child never entered"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            assert child.wait(30) == -signal.SIGKILL
        held_at_kill = {s: server.position_amount(s) for s in SYMBOLS}
        live_env(monkeypatch, server)
        quiet_books = [book(s, marks[s], T0) for s in SYMBOLS]  # before any time stop is due
        restarted = run_session(db, session_id="restarted", mode="live", feed=MarkFeed(quiet_books, server),
                                config=KEEP_OPEN, symbols=SYMBOLS, rest_url=server.rest_url)
        held = {s: server.position_amount(s) for s in SYMBOLS if server.position_amount(s)}
        protection = {s: server.open_algo_orders(s) for s in SYMBOLS}
        entries = [o for o in server.orders if o["newClientOrderId"].startswith("wnen-")]
    assert held and held == {s: a for s, a in held_at_kill.items() if a}  # nothing added, nothing lost
    for symbol, amount in held.items():
        stops = [o for o in protection[symbol] if o["orderType"] == "STOP_MARKET"]
        assert len(stops) == 1, f"{symbol}: {len(stops)} stops"
        assert stops[0]["side"] == ("SELL" if amount > 0 else "BUY") and stops[0]["closePosition"] is True
        assert [o["orderType"] for o in protection[symbol]].count("TAKE_PROFIT_MARKET") == 1
    for symbol in set(SYMBOLS) - set(held):
        assert protection[symbol] == []
    # One entry order per position, each client id sent once.
    assert sorted(o["symbol"] for o in entries) == sorted(held)
    assert len({o["newClientOrderId"] for o in entries}) == len(entries)
    trades = live_trades(db)
    assert sorted((t.symbol, t.status, t.quantity) for t in trades) == sorted(
        (s, TradeStatus.OPEN, abs(a)) for s, a in held.items())
    assert restarted.status == "completed" and sorted(p.symbol for p in restarted.open_positions) == sorted(held)


def test_an_expired_stop_is_placed_again_while_the_position_is_open(db, monkeypatch):
    with LocalBinanceServer(tuple(SYMBOLS)) as server:
        server.set_mark_price("BTCUSDT", 60_000.0)
        live_env(monkeypatch, server)
        by_hand(server, "BTCUSDT", "BUY", "0.010")  # adopted and protected at start
        expire = session_actions(server, lambda: server.expire_algo_order("BTCUSDT", "STOP_MARKET"))
        config = replace(KEEP_OPEN, reconcile_seconds=3_600.0)  # only the stream tells
        result = run_session(db, session_id="expired", mode="live", feed=ListFeed(quiet() + quiet(seconds=2),
                             actions={1: expire}), config=config, symbols=SYMBOLS, rest_url=server.rest_url,
                             ws_url=server.ws_url)
        protection = sorted(o["orderType"] for o in server.open_algo_orders("BTCUSDT"))
        stops_sent = [r for r in server.algo_requests if r["type"] == "STOP_MARKET"]
    actions = [(d.action, d.reason) for d in result.decisions]
    assert ("protect", "stop_loss expired") in actions
    assert ("protect", "protection lost (stop_loss expired): placing it again") in actions
    assert ("protect", "protection placed again") in actions
    assert protection == ["STOP_MARKET", "TAKE_PROFIT_MARKET"] and len(stops_sent) == 2
    [position] = result.open_positions
    stop_ids = [r["clientAlgoId"] for r in stops_sent]  # a new id per attempt, each the trade's own
    assert stop_ids == [client_order_id(position.trade_uid, "stop_loss", n) for n in (0, 1)]
    assert len([r for r in server.algo_requests if r["type"] == "TAKE_PROFIT_MARKET"]) == 1  # kept, not doubled


def test_a_missing_stop_found_by_reconciliation_is_placed_again_with_back_off(db, monkeypatch):
    with LocalBinanceServer(tuple(SYMBOLS)) as server:
        server.set_mark_price("BTCUSDT", 60_000.0)
        live_env(monkeypatch, server)
        by_hand(server, "BTCUSDT", "BUY", "0.010")

        async def lose_the_stop_while_the_exchange_refuses() -> None:
            server.expire_algo_order("BTCUSDT", "STOP_MARKET")
            server.failing[ALGO_ORDER] = (400, -1008, "Server is currently overloaded with other requests.")
            await asyncio.sleep(2.5)  # attempts at once, after 1 s and after 2 s more, not one per event
            del server.failing[ALGO_ORDER]

        async def wait() -> None:
            await asyncio.sleep(4.5)  # the next attempt (4 s later) finds the exchange answering

        events = [book("BTCUSDT", 60_000.0, T0.replace(second=n)) for n in range(1, 4)]
        config = replace(KEEP_OPEN, reconcile_seconds=0.0)  # a reconciliation between events and while quiet
        result = run_session(db, session_id="backoff", mode="live",
                             feed=ListFeed(events, actions={1: lose_the_stop_while_the_exchange_refuses, 2: wait}),
                             config=config, symbols=SYMBOLS, rest_url=server.rest_url)
        protection = sorted(o["orderType"] for o in server.open_algo_orders("BTCUSDT"))
    decisions = [(d.action, d.reason) for d in result.decisions]
    lost = [r for a, r in decisions if a == "protect" and r.startswith("protection lost")]
    assert lost == ["protection lost (stop_loss not on the exchange): placing it again"]
    refused = [r for a, r in decisions if a == "reject"]
    assert 2 <= len(refused) <= 3 and all("overloaded" in r for r in refused)
    assert ("protect", "protection placed again") in decisions
    assert protection == ["STOP_MARKET", "TAKE_PROFIT_MARKET"]


def _child(database_url: str, rest_url: str, session_id: str) -> None:
    """The session to be killed: the bundled capture traded live, then a quiet feed until killed."""
    events = ReplayFeed().load()
    manager = DatabaseManager(database_url)
    run_session(manager, session_id=session_id, mode="live", feed=ListFeed(events, then_wait=True),
                config=replace(KEEP_OPEN, heartbeat_seconds=0.2), symbols=SYMBOLS, rest_url=rest_url)


if __name__ == "__main__":
    _child(*sys.argv[1:4])
