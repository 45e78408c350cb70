"""The user-data stream against the local Binance server: listenKey creation, keep-alive and renewal,
and a live session driven by the account's events (a stop firing, a partial close, funding, a
liquidation)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from sqlalchemy import select

from winiswin_pipelines.db.models import TradePartialExit, TradeStatus
from winiswin_pipelines.marketdata.binance import BinanceRestClient
from winiswin_pipelines.marketdata.user_stream import CONNECTED, UserDataStream
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines_tests.trading_helpers import (
    KEEP_OPEN,
    SYMBOLS,
    ListFeed,
    by_hand,
    live_env,
    quiet,
    send_by_hand,
    session_actions,
    trades,
)

NO_MINUTE_RECONCILE = replace(KEEP_OPEN, reconcile_seconds=3_600.0)  # only the stream can tell


async def next_event(events, kind: str | None = None) -> dict:
    """The next event (of `kind`), within 5 seconds."""
    while True:
        event = await asyncio.wait_for(anext(events), 5)
        if kind is None or event["e"] == kind:
            return event


async def test_the_stream_is_kept_alive_and_renewed_when_its_key_expires_or_the_connection_drops(server):
    async with BinanceRestClient(server.rest_url, server.api_key, server.api_secret) as client:
        stream = UserDataStream(client, server.ws_url, keepalive_seconds=0.2, backoff=(0.05, 0.5))
        events = stream.events()
        assert (await next_event(events))["e"] == CONNECTED
        await client.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.010", client_order_id="wnen-stream")
        new, fill, account = [await next_event(events) for _ in range(3)]
        assert [(e["e"], e.get("o", {}).get("x")) for e in (new, fill)] == [("ORDER_TRADE_UPDATE", "NEW"),
                                                                          ("ORDER_TRADE_UPDATE", "TRADE")]
        assert (fill["o"]["X"], fill["o"]["l"], fill["o"]["L"], fill["o"]["c"]) == ("FILLED", "0.010", "60000.00000",
                                                                                   "wnen-stream")
        assert float(fill["o"]["n"]) == pytest.approx(60_000 * 0.01 * 0.0005)
        assert (account["e"], account["a"]["m"], account["a"]["P"][0]["pa"]) == ("ACCOUNT_UPDATE", "ORDER", "0.010")
        await asyncio.sleep(0.5)
        assert server.keepalives >= 1 and stream.keepalives >= 1
        server.expire_listen_key()  # listenKeyExpired: a new key, a new connection
        assert (await next_event(events))["e"] == CONNECTED
        assert server.listen_keys_created == stream.keys_created == 2
        server.set_mark_price("BTCUSDT", 60_010.0)
        await client.new_order("BTCUSDT", "SELL", "MARKET", quantity="0.010", reduce_only=True)
        closing = await next_event(events, "ACCOUNT_UPDATE")
        assert closing["a"]["P"][0]["pa"] == "0.000"
        server.drop_connections()  # a dropped connection: connected again (the same key, still valid)
        assert (await next_event(events))["e"] == CONNECTED
        assert stream.connections == 3
        await events.aclose()


def test_a_session_follows_the_stream_partial_close_funding_and_a_stop_that_fires(db, server, monkeypatch):
    live_env(monkeypatch, server)
    server.set_account(wallet=5_000.0)
    by_hand(server, "BTCUSDT", "BUY", "0.010")  # adopted at start: stop 59,820, take profit 60,270
    act = session_actions(
        server,
        lambda: send_by_hand(server, "BTCUSDT", "SELL", "0.004", "-part"),  # closed in part by hand
        lambda: server.charge_funding("BTCUSDT", -1.25),
        lambda: server.set_mark_price("BTCUSDT", 59_800.0),  # the stop fires on what is left
    )
    result = run_session(db, session_id="streamed", mode="live", feed=ListFeed(quiet() + quiet(seconds=2),
                         actions={1: act}), config=NO_MINUTE_RECONCILE, symbols=SYMBOLS, rest_url=server.rest_url,
                         ws_url=server.ws_url)
    actions = [(d.action, d.reason) for d in result.decisions]
    assert actions[0] == ("adopt", "a position on the exchange no trade explained")
    assert ("partial_exit", "manual") in actions and ("funding", "funding fee -1.25000000 USDT") in actions
    assert ("protect", "stop_loss finished") in actions and ("exit", "stop_loss") in actions
    [closed] = result.closed
    assert (closed.symbol, closed.exit_reason, closed.exit_price, closed.quantity) == ("BTCUSDT", "stop_loss",
                                                                                       59_800.0, 0.006)
    stop_fill = server.account.trades[-1]
    [trade] = trades(db, "streamed-")
    assert (trade.status, trade.exit_reason, trade.exit_price) == (TradeStatus.CLOSED, "stop_loss", 59_800.0)
    assert trade.fees == pytest.approx(float(stop_fill["commission"]))  # from the event's n
    assert trade.pnl == pytest.approx(float(stop_fill["realizedPnl"]) - trade.fees - 1.25)  # rp, fee, funding
    with db.session() as session:
        [partial] = session.scalars(select(TradePartialExit)).all()
    assert (partial.trade_uid, partial.quantity, partial.exit_price, partial.reason) == (trade.trade_uid, 0.004,
                                                                                        60_000.0, "manual")
    assert partial.fees == pytest.approx(60_000 * 0.004 * 0.0005)
    assert server.open_algo_orders() == []  # the take profit left over was cancelled
    assert server.count_requests("/fapi/v1/userTrades") == 0  # the stream said it all


def test_a_liquidation_on_the_stream_is_recorded_as_liquidated(db, server, monkeypatch):
    live_env(monkeypatch, server)
    by_hand(server, "ETHUSDT", "SELL", "1.000")
    act = session_actions(server, lambda: server.liquidate("ETHUSDT", 3_100.0))
    result = run_session(db, session_id="liquidated", mode="live", feed=ListFeed(quiet() + quiet(seconds=2),
                         actions={1: act}), config=NO_MINUTE_RECONCILE, symbols=SYMBOLS, rest_url=server.rest_url,
                         ws_url=server.ws_url)
    [closed] = result.closed
    assert (closed.exit_reason, closed.exit_price) == ("liquidation", 3_100.0)
    [trade] = trades(db, "liquidated-")
    assert (trade.status, trade.pnl) == (TradeStatus.LIQUIDATED, pytest.approx(-100.0 - 3_100.0 * 0.0005))
