"""The exchange as the source of truth: reconciliation at start and every minute against the local
Binance server (positions, balance, open orders and algo orders; exits from /fapi/v1/userTrades)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select

from winiswin_pipelines.db.models import Trade, TradeStatus
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines_tests.trading_helpers import (
    KEEP_OPEN,
    SYMBOLS,
    ListFeed,
    MarkFeed,
    by_hand,
    live_env,
    quiet,
    send_by_hand,
    trades,
)


def test_a_position_no_trade_explains_is_adopted_and_protected(db, server, monkeypatch):
    live_env(monkeypatch, server)
    by_hand(server, "ETHUSDT", "BUY", "0.500")
    result = run_session(db, session_id="adopting", mode="live", feed=MarkFeed(quiet(), server), config=KEEP_OPEN,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    [adopt] = [d for d in result.decisions if d.action == "adopt"]
    assert (adopt.symbol, adopt.price, adopt.details["side"], adopt.details["quantity"]) == ("ETHUSDT", 3_000.0,
                                                                                          "LONG", 0.5)
    [trade] = trades(db, "adopting-")
    assert (trade.status, trade.source, trade.strategy, trade.side, trade.entry_price, trade.quantity) == (
        TradeStatus.OPEN, "live", "adopted", "LONG", 3_000.0, 0.5)
    # Protected at the default distances (0.3% stop, 1.5 x that take profit), on the exchange.
    protection = sorted((o["orderType"], float(o["triggerPrice"])) for o in server.open_algo_orders("ETHUSDT"))
    assert protection == [("STOP_MARKET", 2_991.0), ("TAKE_PROFIT_MARKET", 3_013.5)]
    assert [o["newClientOrderId"] for o in server.orders] == ["by-hand-BUY"]  # nothing added to it
    # The next session resumes it (no second adoption, no second protection).
    again = run_session(db, session_id="adopting-2", mode="live", feed=MarkFeed(quiet(), server), config=KEEP_OPEN,
                        symbols=SYMBOLS, rest_url=server.rest_url)
    assert [d.action for d in again.decisions] == ["resume"]
    assert len(server.algo_requests) == 2 and len(trades(db, "adopting-2-")) == 0


def test_a_liquidation_while_down_is_recorded_as_liquidated(db, server, monkeypatch):
    live_env(monkeypatch, server)
    by_hand(server, "ETHUSDT", "BUY", "0.500")
    run_session(db, session_id="liq", mode="live", feed=MarkFeed(quiet(), server), config=KEEP_OPEN,
                symbols=SYMBOLS, rest_url=server.rest_url)
    liquidation = server.liquidate("ETHUSDT", 2_900.0)
    result = run_session(db, session_id="liq-after", mode="live", feed=MarkFeed(quiet(), server), config=KEEP_OPEN,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    [closed] = result.closed
    assert (closed.symbol, closed.exit_reason, closed.exit_price) == ("ETHUSDT", "liquidation", 2_900.0)
    [trade] = trades(db, "liq-")
    [fill] = [t for t in server.account.trades if t["orderId"] == liquidation["orderId"]]
    assert (trade.status, trade.exit_reason, trade.exit_price) == (TradeStatus.LIQUIDATED, "liquidation", 2_900.0)
    assert trade.fees == pytest.approx(float(fill["commission"]))  # an adopted trade's entry fee is unknown
    assert trade.pnl == pytest.approx(-50.0 - float(fill["commission"]))
    assert server.open_algo_orders() == []


def test_a_position_closed_by_hand_during_the_session_is_found_within_a_reconciliation(db, server, monkeypatch):
    """Every minute (here: every event) the session compares itself with the exchange; a close by hand
    is recorded with its real fills, in two parts, at their quantity-weighted price."""
    live_env(monkeypatch, server)
    by_hand(server, "BTCUSDT", "BUY", "0.010")
    config = replace(KEEP_OPEN, reconcile_seconds=0.0)

    async def close_in_two() -> None:
        server.set_mark_price("BTCUSDT", 60_100.0)
        await send_by_hand(server, "BTCUSDT", "SELL", "0.004", "-1")
        server.set_mark_price("BTCUSDT", 60_200.0)
        await send_by_hand(server, "BTCUSDT", "SELL", "0.006", "-2")

    feed = ListFeed(quiet() + quiet(seconds=2), actions={1: close_in_two})
    result = run_session(db, session_id="by-hand", mode="live", feed=feed, config=config, symbols=SYMBOLS,
                         rest_url=server.rest_url)
    [closed] = result.closed
    assert (closed.symbol, closed.exit_reason) == ("BTCUSDT", "manual")
    assert closed.exit_price == pytest.approx((60_100.0 * 0.004 + 60_200.0 * 0.006) / 0.01)
    [trade] = trades(db, "by-hand-")
    assert trade.pnl == pytest.approx(100.0 * 0.004 + 200.0 * 0.006 - trade.fees)
    assert trade.fees == pytest.approx((60_100.0 * 0.004 + 60_200.0 * 0.006) * 0.0005)
    assert result.reconciliation["positions"] == {} and result.reconciliation["wallet_balance"] > 0
    assert server.open_algo_orders() == []  # the take profit it no longer needs was cancelled
    with db.session() as session:
        assert session.scalars(select(Trade.status).where(Trade.source == "live")).all() == [TradeStatus.CLOSED]
