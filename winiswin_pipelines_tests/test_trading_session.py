"""The trading session on real PostgreSQL: deterministic replays, the time stop across restarts,
termination, and live execution against the local Binance server."""

from __future__ import annotations

import _thread
import asyncio
import datetime as dt
import signal
import time
import uuid
from dataclasses import replace

import pytest
from sqlalchemy import select

from winiswin_pipelines.db.embedded import ensure_database_exists
from winiswin_pipelines.db.entry_times import get_all_entry_times, upsert_entry_time
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import TradeStatus, TradingDecision, TradingSession
from winiswin_pipelines.marketdata.feed import BinanceFeed, BookEvent, ReplayFeed
from winiswin_pipelines.trading.execution import LiveTradingRefused
from winiswin_pipelines.trading.repository import session_trades
from winiswin_pipelines.trading.runner import run_session, run_session_in_thread
from winiswin_pipelines_tests.binance_server import LocalBinanceServer
from winiswin_pipelines_tests.trading_helpers import REPLAY, SYMBOLS, ListFeed, MarkFeed, live_env
from winiswin_pipelines_tests.trading_helpers import trades as read_trades


def _without_session(uid: str | None, session_id: str) -> str | None:
    return uid.removeprefix(session_id) if uid else uid


def test_replay_session_is_deterministic(db):
    results = [run_session(db, session_id=f"replay-{n}", mode="paper", feed=ReplayFeed(), config=REPLAY,
                           symbols=SYMBOLS) for n in (1, 2)]
    first, second = results
    assert first.status == second.status == "completed"
    assert first.events == second.events == 974 and first.bars == 14
    assert len(first.closed) >= 1, "the replay should trade"
    decisions = [[(d.ts, d.symbol, d.action, d.reason, d.price, _without_session(d.trade_uid, r.session_id), d.details)
                  for d in r.decisions] for r in results]
    assert decisions[0] == decisions[1]
    closed = [[replace(c, trade_uid=_without_session(c.trade_uid, r.session_id)) for c in r.closed] for r in results]
    assert closed[0] == closed[1]
    assert first.equity == second.equity

    # What PostgreSQL holds is the same for both runs too, and matches what the session did.
    rows = []
    for result in results:
        trades = read_trades(db, f"{result.session_id}-")
        assert len(trades) == len(result.closed) and {t.status for t in trades} == {TradeStatus.CLOSED}
        assert {t.source for t in trades} == {"paper"} and all(t.is_virtual for t in trades)
        rows.append([(t.symbol, t.side, t.entry_time, t.entry_price, t.quantity, t.exit_time, t.exit_price, t.pnl,
                      t.exit_reason, t.stop_loss, t.take_profit, t.features) for t in trades])
        stored, entered = session_trades(db, result.session_id)
        assert [t.trade_uid for t in entered] == [t.trade_uid for t in trades]
        with db.session() as session:
            heartbeat = session.get(TradingSession, result.session_id)
        assert [(d.ts, d.action, d.reason) for d in stored] == [(d.ts, d.action, d.reason) for d in result.decisions]
        assert (heartbeat.status, heartbeat.ticks, heartbeat.mode) == ("completed", 974, "paper")
        assert heartbeat.stopped_at is not None and heartbeat.details["closed_trades"] == len(result.closed)
    assert rows[0] == rows[1]
    with db.engine.connect() as conn:
        assert get_all_entry_times(conn) == {}  # everything was closed at the end of the replay


def test_time_stop_fires_after_restart(db, capture_events):
    first = run_session(db, session_id="before-restart", mode="paper", feed=ListFeed(capture_events),
                        config=replace(REPLAY, flatten_on_end=False), symbols=SYMBOLS)
    assert first.status == "completed" and {p.symbol for p in first.open_positions} == set(SYMBOLS)
    fills = {p.symbol: p for p in first.open_positions}
    live_fill = fills["BTCUSDT"].entry_time - dt.timedelta(minutes=30)
    with db.engine.begin() as conn:
        assert get_all_entry_times(conn) == {}  # paper keeps its fill times on its own trades
        upsert_entry_time(conn, "BTCUSDT", live_fill)  # a live position's: the paper stop must not follow it
    assert {t.status for t in read_trades(db, "before-restart-")} == {TradeStatus.OPEN}

    def book(symbol: str, after: dt.timedelta) -> BookEvent:
        price = fills[symbol].entry_price  # between the stop loss and the take profit
        return BookEvent(symbol, fills[symbol].entry_time + after, None, 1, price, 1.0, price, 1.0, [price], [1.0],
                         [price], [1.0])

    later = sorted([book("BTCUSDT", dt.timedelta(hours=1, minutes=31)), book("ETHUSDT", dt.timedelta(hours=1, minutes=59)),
                    book("BTCUSDT", dt.timedelta(hours=2, seconds=1)), book("ETHUSDT", dt.timedelta(hours=2, seconds=1))],
                   key=lambda event: event.exchange_time)
    second = run_session(db, session_id="after-restart", mode="paper", feed=ListFeed(later),
                         config=replace(REPLAY, flatten_on_end=False), symbols=SYMBOLS)
    assert [d.action for d in second.decisions] == ["resume", "resume", "exit", "exit"]
    assert sorted((c.symbol, c.exit_reason, c.exit_time - fills[c.symbol].entry_time) for c in second.closed) == [
        ("BTCUSDT", "time_stop", dt.timedelta(hours=2, seconds=1)),
        ("ETHUSDT", "time_stop", dt.timedelta(hours=2, seconds=1)),
    ]
    trades = read_trades(db, "before-restart-")
    assert [(t.status, t.exit_reason) for t in trades] == [(TradeStatus.CLOSED, "time_stop")] * 2
    with db.engine.connect() as conn:
        assert get_all_entry_times(conn) == {"BTCUSDT": live_fill}  # the live row untouched


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler: a test process started in the background inherits SIGINT ignored,
    and then `_thread.interrupt_main` (what terminating a run delivers) would do nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_terminate_flushes_and_leaves_positions_recorded(db, capture_events, python_sigint_handler):
    # The feed delivers the capture, then the operator terminates the run while the session waits.
    feed = ListFeed(capture_events, actions={len(capture_events): _thread.interrupt_main}, then_wait=True)
    with pytest.raises(KeyboardInterrupt):
        run_session_in_thread(db, session_id="terminated", mode="paper", feed=feed,
                              config=replace(REPLAY, flatten_on_end=True), symbols=SYMBOLS)
    with db.session() as session:
        heartbeat = session.get(TradingSession, "terminated")
        actions = session.scalars(select(TradingDecision.action)
                                  .where(TradingDecision.session_id == "terminated")).all()
    assert heartbeat.status == "terminated" and heartbeat.ticks == len(capture_events)
    assert actions.count("enter") == 2 and "exit" not in actions  # terminated: not flattened
    trades = read_trades(db, "terminated-")
    assert [(t.symbol, t.status) for t in trades] == [("BTCUSDT", TradeStatus.OPEN), ("ETHUSDT", TradeStatus.OPEN)]
    with db.engine.connect() as conn:
        assert get_all_entry_times(conn) == {}  # paper: the fill times are on the trades only


def test_live_refuses_without_keys_and_opt_in(db, capture_events, monkeypatch):
    with LocalBinanceServer(tuple(SYMBOLS)) as server:
        for env in ({}, {"BINANCE_API_KEY": server.api_key, "BINANCE_API_SECRET": server.api_secret},
                    {"WINISWIN_LIVE_TRADING": "1", "BINANCE_API_KEY": server.api_key}):
            for name in ("BINANCE_API_KEY", "BINANCE_API_SECRET", "WINISWIN_LIVE_TRADING"):
                monkeypatch.delenv(name, raising=False)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            with pytest.raises(LiveTradingRefused, match="live trading refused") as refused:
                run_session(db, session_id="live-refused", mode="live", feed=ListFeed(capture_events),
                            config=REPLAY, symbols=SYMBOLS, rest_url=server.rest_url)
            assert server.api_secret not in str(refused.value)
        assert server.orders == [] and server.count_requests("/fapi/v1/exchangeInfo") == 0
        with db.session() as session:
            assert session.get(TradingSession, "live-refused") is None


def test_live_orders_respect_exchange_filters(db, capture_events, monkeypatch):
    with LocalBinanceServer(tuple(SYMBOLS)) as server:
        live_env(monkeypatch, server)
        result = run_session(db, session_id="live", mode="live", feed=MarkFeed(capture_events, server),
                             config=REPLAY, symbols=SYMBOLS, rest_url=server.rest_url)
        orders = list(server.orders)
        algo = list(server.algo_requests)
        still_open = server.open_algo_orders()
        positions = [server.position_amount(s) for s in SYMBOLS]
    assert result.status == "completed" and len(result.closed) == 2
    # Two SHORT entries (SELL) and their closes (BUY, reduce-only), quantities on the 0.001 step.
    assert [(o["symbol"], o["side"], o["type"], o.get("reduceOnly")) for o in orders] == [
        ("BTCUSDT", "SELL", "MARKET", None), ("ETHUSDT", "SELL", "MARKET", None),
        ("BTCUSDT", "BUY", "MARKET", "true"), ("ETHUSDT", "BUY", "MARKET", "true")]
    for order in orders:
        assert len(order["quantity"].partition(".")[2]) <= 3 and float(order["quantity"]) > 0
    # Every order carries the client id derived from its trade.
    ids = [o["newClientOrderId"] for o in orders]
    assert len(set(ids)) == 4 and all(len(i) <= 36 and i.startswith(("wnen-", "wnex-")) for i in ids)
    # Each entry was protected on the exchange right after its fill, and the protection cancelled at the close.
    algo.sort(key=lambda a: (a["symbol"], a["type"]))  # a position's two are placed together
    assert [(a["symbol"], a["side"], a["type"], a["closePosition"], a["workingType"]) for a in algo] == [
        ("BTCUSDT", "BUY", "STOP_MARKET", "true", "MARK_PRICE"), ("BTCUSDT", "BUY", "TAKE_PROFIT_MARKET", "true", "MARK_PRICE"),
        ("ETHUSDT", "BUY", "STOP_MARKET", "true", "MARK_PRICE"), ("ETHUSDT", "BUY", "TAKE_PROFIT_MARKET", "true", "MARK_PRICE")]
    assert still_open == [] and positions == [0.0, 0.0]
    trades = read_trades(db, "live-")
    assert [(t.source, t.is_virtual, t.status) for t in trades] == [("live", False, TradeStatus.CLOSED)] * 2
    assert [t.quantity for t in trades] == [float(o["quantity"]) for o in orders[:2]]
    # The stops sit where the exchange was asked to put them (on the 0.1 tick).
    assert [float(a["triggerPrice"]) for a in algo[::2]] == [round(t.stop_loss, 1) for t in trades]


def test_paper_session_on_the_live_feed(db):
    """Paper trading on the live Binance feed (the local server): REST warm-up, then the stream."""
    with LocalBinanceServer(tuple(SYMBOLS)) as server:
        # The simulated exchange closes a 1m bar every 0.3 s: some history to warm up on (waited for,
        # not slept: on a loaded machine the server's clock runs late).
        deadline = time.monotonic() + 30
        while any(len(server.closed_bars(s, "1m")) < 3 for s in SYMBOLS) and time.monotonic() < deadline:
            time.sleep(0.05)
        feed = BinanceFeed(SYMBOLS, ws_url=server.ws_url, rest_url=server.rest_url)
        result = run_session(db, session_id="paper-on-live", mode="paper", feed=feed,
                             config=replace(REPLAY, flatten_on_end=False, max_events=1500), symbols=SYMBOLS)
        orders = list(server.orders)
    assert result.status == "max_events" and result.events == 1500
    assert result.warm_up_bars >= 2 * len(SYMBOLS) and result.bars >= len(SYMBOLS)
    assert orders == []  # paper: nothing reaches the exchange
    with db.session() as session:
        heartbeat = session.get(TradingSession, "paper-on-live")
    assert (heartbeat.status, heartbeat.ticks) == ("max_events", 1500)
    assert heartbeat.details["warm_up_bars"] == result.warm_up_bars
    assert len(read_trades(db, "paper-on-live-")) == sum(d.action == "enter" for d in result.decisions)


def test_session_rides_out_a_postgres_outage(own_server, capture_events):  # noqa: F811
    """PostgreSQL stops while the session trades and comes back: nothing is lost, trading goes on."""
    info = own_server.ensure_running()
    name = f"session_{uuid.uuid4().hex[:10]}"
    ensure_database_exists(info.url("postgres"), name)
    manager = DatabaseManager(info.url(name).render_as_string(hide_password=False))
    count = len(capture_events)
    # Down from half-way to 85% of the capture: both entries (at 00:03, ~74%) happen while it is down,
    # and the recorder gets a second of wall time to find that out before it comes back.
    feed = ListFeed(capture_events, actions={count // 2: own_server.stop,
                                             int(count * 0.80): lambda: asyncio.sleep(1.0),
                                             int(count * 0.85): own_server.ensure_running})
    try:
        result = run_session(manager, session_id="outage", mode="paper", feed=feed,
                             config=replace(REPLAY, heartbeat_seconds=0.01), symbols=SYMBOLS)
        with manager.session() as session:
            stored = session.scalars(select(TradingDecision).where(TradingDecision.session_id == "outage")
                                     .order_by(TradingDecision.decision_uid)).all()
            heartbeat = session.get(TradingSession, "outage")
        trades = read_trades(manager, "outage-")
    finally:
        manager.dispose()
    assert result.status == "completed" and len(result.closed) == 2
    # The entries were spooled while PostgreSQL was away, and written once it was back.
    assert result.recorder["spooled"] >= 2 and result.recorder["written"] == result.recorder["queued"] == 4
    assert result.recorder["spool_pending"] == 0
    assert [(t.symbol, t.status, t.exit_reason) for t in trades] == [(c.symbol, TradeStatus.CLOSED, c.exit_reason)
                                                                   for c in sorted(result.closed, key=lambda c: c.symbol)]
    assert [(d.ts, d.action, d.reason) for d in stored] == [(d.ts, d.action, d.reason) for d in result.decisions]
    assert (heartbeat.status, heartbeat.ticks) == ("completed", count)
