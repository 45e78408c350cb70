"""Order-level safety against the local Binance server: client ids, lost replies, NEW replies,
protection on the exchange (Algo Order API), restarts, and refused orders that stay local."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from decimal import Decimal

import pytest
from sqlalchemy import select

from winiswin_pipelines.db.models import OrderIntent, TradeStatus
from winiswin_pipelines.marketdata.binance import BinanceAPIError, BinanceRestClient
from winiswin_pipelines.trading.execution import OrderRejected, close_parts, paper_filters
from winiswin_pipelines.trading.journal import OrderIntents
from winiswin_pipelines.trading.orders import belongs_to, client_order_id, id_number, stem_of
from winiswin_pipelines.trading.risk import Position
from winiswin_pipelines.trading.runner import run_session
from winiswin_pipelines_tests.trading_helpers import (
    KEEP_OPEN,
    REPLAY,
    SYMBOLS,
    T0,
    MarkFeed,
    book,
    executor_for,
    live_env,
    trades,
)


def test_client_ids_are_derived_from_the_trade_within_binance_rules():
    ids = {role: client_order_id("live-2024-07-19-a1-BTCUSDT-0001", role)
           for role in ("entry", "exit", "stop_loss", "take_profit")}
    assert len(set(ids.values())) == 4
    assert all(re.fullmatch(r"[.A-Z:/a-z0-9_-]{1,36}", value) for value in ids.values())
    assert client_order_id("live-2024-07-19-a1-BTCUSDT-0001", "entry") == ids["entry"]  # the same every time
    assert client_order_id("live-2024-07-19-a1-BTCUSDT-0002", "entry") != ids["entry"]


def test_numbered_ids_of_a_trade_are_distinct_within_binance_rules_and_recognised_as_its_own():
    uid = "live-2024-07-19-a1-BTCUSDT-0001"
    attempts = [client_order_id(uid, "stop_loss", n) for n in (0, 1, 2, 999_999)]
    assert len(set(attempts)) == 4 and attempts[0] == client_order_id(uid, "stop_loss")
    assert all(re.fullmatch(r"[.A-Z:/a-z0-9_-]{1,36}", value) for value in attempts)
    assert all(belongs_to(value, uid, "stop_loss") for value in attempts)
    assert [id_number(value) for value in attempts] == [0, 1, 2, 999_999]
    assert {stem_of(value) for value in attempts} == {attempts[0][:29]} and stem_of("by-hand-1") is None
    assert not any(belongs_to(value, uid, "take_profit") or belongs_to(value, uid + "0", "stop_loss")
                   for value in attempts)
    with pytest.raises(ValueError):
        client_order_id(uid, "stop_loss", 1_000_000)  # would pass Binance's 36 characters


def test_a_close_above_the_market_maximum_is_cut_into_parts_within_it():
    filters = paper_filters(None, "BTCUSDT")  # MARKET_LOT_SIZE maxQty 120, step 0.001
    assert close_parts(filters, 100.0, 60_000.0) == [Decimal("100.000")]
    parts = close_parts(filters, 250.0, 60_000.0)
    assert parts == [Decimal("83.333"), Decimal("83.333"), Decimal("83.334")] and sum(parts) == 250
    with pytest.raises(OrderRejected, match="refused before sending"):
        close_parts(filters, 0.0004, 60_000.0)  # below the minimum quantity


async def test_a_large_close_goes_as_reduce_only_parts_each_with_its_own_client_id(server):
    server.set_account(wallet=10_000_000.0)
    executor = await executor_for(server)
    position = Position("t-big", "ETHUSDT", "LONG", 300.0, 3_000.0, T0, 2_900.0, 3_100.0)
    try:
        for n in range(3):  # 300 ETH: more than one MARKET order (120) may hold
            await executor.open("ETHUSDT", "LONG", 100.0, 3_000.0, T0, client_id=f"wnen-big-{n}")
        await executor.protect(position)
        fill = await executor.close(position, 3_000.0, T0)
    finally:
        await executor.shutdown()
    closes = [o for o in server.orders if o["newClientOrderId"].startswith("wnex")]
    assert [(o["newClientOrderId"], float(o["quantity"]), str(o.get("reduceOnly")).lower()) for o in closes] == [
        (client_order_id("t-big", "exit", n), 100.0, "true") for n in range(3)]
    assert (fill.quantity, fill.price) == (300.0, 3_000.0)
    assert server.position_amount("ETHUSDT") == 0.0 and server.open_algo_orders() == []


async def test_a_close_refused_before_sending_keeps_its_protection(server):
    executor = await executor_for(server)
    position = Position("t-dust", "BTCUSDT", "LONG", 0.0004, 60_000.0, T0, 59_000.0, 61_000.0)
    try:
        await executor.open("BTCUSDT", "LONG", 0.01, 60_000.0, T0, client_id="wnen-dust")
        await executor.protect(position)
        with pytest.raises(OrderRejected, match="refused before sending"):
            await executor.close(position, 60_000.0, T0)  # 0.0004 is below the minimum quantity
    finally:
        await executor.shutdown()
    assert len(server.open_algo_orders("BTCUSDT")) == 2 and server.count_requests("/fapi/v1/algoOrder") == 2


async def test_startup_keeps_a_later_attempts_protection_and_cancels_it_with_the_close(server):
    executor = await executor_for(server)
    position = Position("t-again", "BTCUSDT", "LONG", 0.01, 60_000.0, T0, 59_000.0, 61_000.0)
    try:
        await executor.open("BTCUSDT", "LONG", 0.01, 60_000.0, T0, client_id=client_order_id("t-again", "entry"))
        await executor.client.new_algo_order("BTCUSDT", "SELL", "STOP_MARKET", trigger_price="59000",
                                             client_algo_id=client_order_id("t-again", "stop_loss", 3))
        await executor.client.new_algo_order("BTCUSDT", "SELL", "TAKE_PROFIT_MARKET", trigger_price="61000",
                                             client_algo_id=client_order_id("t-again", "take_profit"))
        cancelled, lacking = await executor.tidy_protection([position])
        await executor.close(position, 60_000.0, T0)
    finally:
        await executor.shutdown()
    assert (cancelled, lacking) == ([], [])
    assert server.open_algo_orders() == [] and server.position_amount("BTCUSDT") == 0.0


async def test_an_order_whose_reply_was_lost_is_found_by_its_client_id_not_sent_twice(server):
    executor = await executor_for(server)
    try:
        server.drop_next_reply()  # executed, then the connection drops before the reply
        fill = await executor.open("BTCUSDT", "LONG", 0.01, 60_000.0, T0, client_id="wnen-lost-reply")
    finally:
        await executor.shutdown()
    assert [o["newClientOrderId"] for o in server.orders] == ["wnen-lost-reply"]  # sent once
    assert server.count_requests("/fapi/v1/order") == 2  # the POST and the lookup
    assert (fill.price, fill.quantity) == (60_000.0, 0.01) and server.position_amount("BTCUSDT") == 0.01


async def test_a_new_reply_is_not_a_fill(server):
    executor = await executor_for(server, fill_timeout=0.3)
    try:
        server.fill_after_queries(3)  # answered NEW; filled at the third lookup
        server.set_mark_price("BTCUSDT", 60_123.4)
        fill = await executor.open("BTCUSDT", "SHORT", 0.002, 59_000.0, T0, client_id="wnen-slow")
        assert (fill.price, fill.quantity) == (60_123.4, 0.002)  # the exchange's price, not the reference
        server.fill_after_queries(1_000)  # never fills: cancelled after the timeout, no position taken
        with pytest.raises(OrderRejected, match="CANCELED without a fill"):
            await executor.open("ETHUSDT", "LONG", 0.1, 3_000.0, T0, client_id="wnen-never")
    finally:
        await executor.shutdown()
    assert server.position_amount("BTCUSDT") == -0.002 and server.position_amount("ETHUSDT") == 0.0


async def test_conditional_types_go_through_the_algo_order_api(server):
    async with BinanceRestClient(server.rest_url, server.api_key, server.api_secret) as client:
        with pytest.raises(BinanceAPIError) as refused:
            await client.new_order("BTCUSDT", "SELL", "STOP_MARKET", stopPrice="59000", closePosition="true")
        assert refused.value.code == -4120 and "Algo Order API" in refused.value.message
        await client.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.010")
        stop = await client.new_algo_order("BTCUSDT", "SELL", "STOP_MARKET", trigger_price="59000",
                                           client_algo_id="wnsl-a")
        assert (stop["algoStatus"], stop["closePosition"], stop["workingType"]) == ("NEW", True, "MARK_PRICE")
        with pytest.raises(BinanceAPIError, match="immediately trigger"):  # a stop above the mark for a long
            await client.new_algo_order("BTCUSDT", "SELL", "STOP_MARKET", trigger_price="61000",
                                        client_algo_id="wnsl-b")
        assert [o["clientAlgoId"] for o in await client.open_algo_orders("BTCUSDT")] == ["wnsl-a"]
        fired = server.set_mark_price("BTCUSDT", 58_990.0)  # the mark crosses the stop
        assert [(o["clientAlgoId"], o["algoStatus"]) for o in fired] == [("wnsl-a", "FINISHED")]
        closing = await client.query_order("BTCUSDT", order_id=fired[0]["actualOrderId"])
        assert (closing["status"], closing["avgPrice"], closing["reduceOnly"]) == ("FILLED", "58990.00000", True)
        assert server.position_amount("BTCUSDT") == 0.0
        assert await client.open_algo_orders() == []
        assert (await client.query_algo_order("wnsl-a"))["algoStatus"] == "FINISHED"
        with pytest.raises(BinanceAPIError) as unknown:
            await client.cancel_algo_order("wnsl-a")
        assert unknown.value.code == -2011


async def test_protection_is_placed_once_and_cancelled_with_the_close(server):
    executor = await executor_for(server)
    position = Position("t-1", "BTCUSDT", "LONG", 0.01, 60_000.0, T0, 59_400.04, 60_900.0)
    try:
        await executor.open("BTCUSDT", "LONG", 0.01, 60_000.0, T0, client_id=client_order_id("t-1", "entry"))
        await executor.protect(position)
        await executor.protect(position)  # again (e.g. a retry): kept, not doubled
        protection = server.open_algo_orders("BTCUSDT")
        fill = await executor.close(position, 60_000.0, T0)
    finally:
        await executor.shutdown()
    assert sorted((o["orderType"], o["triggerPrice"], o["side"]) for o in protection) == [
        ("STOP_MARKET", "59400.0", "SELL"), ("TAKE_PROFIT_MARKET", "60900.0", "SELL")]
    assert server.open_algo_orders() == [] and server.position_amount("BTCUSDT") == 0.0
    assert fill.reason is None and fill.quantity == 0.01


def test_a_stop_that_fired_while_no_session_ran_is_recorded_with_its_fill(db, server, capture_events, monkeypatch):
    live_env(monkeypatch, server)
    first = run_session(db, session_id="before", mode="live", feed=MarkFeed(capture_events, server),
                        config=KEEP_OPEN, symbols=SYMBOLS, rest_url=server.rest_url)
    held = {p.symbol: p for p in first.open_positions}
    assert set(held) == set(SYMBOLS)
    assert sorted(o["symbol"] for o in server.open_algo_orders()) == sorted(SYMBOLS * 2)
    # While no session runs, BTC's mark price rises through the stop of its short: the exchange closes it.
    btc = held["BTCUSDT"]
    fired = server.set_mark_price("BTCUSDT", round(btc.stop_loss + 5, 1))
    assert [o["orderType"] for o in fired] == ["STOP_MARKET"] and server.position_amount("BTCUSDT") == 0.0
    eth_price = round((held["ETHUSDT"].stop_loss + held["ETHUSDT"].take_profit) / 2, 1)
    later = first.last_event_time + dt.timedelta(seconds=1)
    server.set_mark_price("ETHUSDT", eth_price)
    second = run_session(db, session_id="after", mode="live",
                         feed=MarkFeed([book("ETHUSDT", eth_price, later)], server), config=KEEP_OPEN,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    # BTC: reconciliation at start finds it gone; the exit is the stop's real fill, with its real fee.
    assert [(c.symbol, c.exit_reason, c.exit_price) for c in second.closed] == [
        ("BTCUSDT", "stop_loss", float(fired[0]["actualPrice"]))]
    [stop_fill] = [t for t in server.account.trades if str(t["orderId"]) == fired[0]["actualOrderId"]]
    stored = {t.symbol: t for t in trades(db, "before-")}
    assert (stored["BTCUSDT"].status, stored["BTCUSDT"].exit_reason) == (TradeStatus.CLOSED, "stop_loss")
    assert stored["BTCUSDT"].exit_price == float(fired[0]["actualPrice"])
    entry_fees = held["BTCUSDT"].entry_fees
    assert stored["BTCUSDT"].fees == pytest.approx(entry_fees + float(stop_fill["commission"]))
    assert stored["BTCUSDT"].pnl == pytest.approx(float(stop_fill["realizedPnl"]) - stored["BTCUSDT"].fees)
    [closed] = [d for d in second.decisions if d.action == "reconcile"]
    assert (closed.symbol, closed.reason) == ("BTCUSDT", "closed on the exchange (stop_loss)")
    # ETH: still held, and protected by exactly one stop and one take profit, the ones placed at first.
    assert stored["ETHUSDT"].status == TradeStatus.OPEN and server.position_amount("ETHUSDT") < 0
    eth_orders = server.open_algo_orders("ETHUSDT")
    assert sorted(o["orderType"] for o in eth_orders) == ["STOP_MARKET", "TAKE_PROFIT_MARKET"]
    assert server.open_algo_orders("BTCUSDT") == []
    assert len(server.algo_requests) == 4  # the first session's four: nothing placed again
    assert second.reconciliation["positions"] == {"ETHUSDT": server.position_amount("ETHUSDT")}


def test_a_restart_records_an_entry_whose_recording_was_lost_and_sends_it_once(db, server, capture_events,
                                                                                monkeypatch):
    """The session died between its entry order and the recording (kill -9): the next one finds the
    order by its client id (its intent is in PostgreSQL), records and protects the position, and never
    sends the entry again."""
    live_env(monkeypatch, server)
    intents = OrderIntents(db, "live", "crashed")
    uid = "crashed-BTCUSDT-0001"
    entry = {"symbol": "BTCUSDT", "side": "LONG", "stop_loss": 59_400.0, "take_profit": 60_900.0,
             "reference": 60_000.0, "confidence": 0.7, "reason": "test", "features": {},
             "client_id": client_order_id(uid, "entry")}
    intents.add(uid, entry, 0.01)
    never_sent = "crashed-ETHUSDT-0002"
    intents.add(never_sent, {**entry, "symbol": "ETHUSDT", "client_id": client_order_id(never_sent, "entry")}, 0.1)
    server.drop_next_reply()  # the crashed session's order: executed, its reply lost

    async def send_lost() -> None:
        async with BinanceRestClient(server.rest_url, server.api_key, server.api_secret) as client:
            with pytest.raises(BinanceAPIError):
                await client.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.010",
                                       client_order_id=entry["client_id"])

    asyncio.run(send_lost())
    quiet = [book("BTCUSDT", 60_000.0, T0 + dt.timedelta(seconds=1))]
    results = [run_session(db, session_id=f"restart-{n}", mode="live", feed=MarkFeed(quiet, server),
                           config=KEEP_OPEN, symbols=SYMBOLS, rest_url=server.rest_url) for n in (1, 2)]
    assert [d.action for d in results[0].decisions] == ["recover", "enter"]
    assert [d.action for d in results[1].decisions] == ["resume"]
    assert [o["newClientOrderId"] for o in server.orders] == [entry["client_id"]]  # the entry went out once
    assert server.position_amount("BTCUSDT") == 0.01
    [trade] = trades(db, "crashed-")
    assert (trade.status, trade.entry_price, trade.quantity, trade.source) == (TradeStatus.OPEN, 60_000.0, 0.01,
                                                                               "live")
    protection = server.open_algo_orders()
    assert sorted(o["orderType"] for o in protection) == ["STOP_MARKET", "TAKE_PROFIT_MARKET"]
    assert len(server.algo_requests) == 2  # the second start kept them
    # The BTC intent is settled as filled (its position is open), the ETH one never reached the exchange.
    with db.session() as session:
        stored = {i.trade_uid: (i.status, i.symbol, i.quantity, i.details["stop_loss"])
                  for i in session.scalars(select(OrderIntent))}
    assert stored == {uid: ("filled", "BTCUSDT", 0.01, 59_400.0), never_sent: ("unfilled", "ETHUSDT", 0.1, 59_400.0)}
    assert set(intents.unsettled()) == {uid}


def test_live_entries_are_written_ahead_and_settled(db, server, capture_events, monkeypatch):
    live_env(monkeypatch, server)
    server.reject_next_order("ETHUSDT", -2019, "Margin is insufficient.")
    result = run_session(db, session_id="ahead", mode="live", feed=MarkFeed(capture_events, server), config=REPLAY,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    with db.session() as session:
        stored = {(i.symbol, i.status, i.session_id, i.mode, i.client_id == client_order_id(i.trade_uid, "entry"))
                  for i in session.scalars(select(OrderIntent))}
    assert [c.symbol for c in result.closed] == ["BTCUSDT"]
    assert stored == {("BTCUSDT", "closed", "ahead", "live", True), ("ETHUSDT", "rejected", "ahead", "live", True)}


def test_startup_cancels_stale_protection_and_leaves_foreign_orders_alone(db, server, monkeypatch):
    live_env(monkeypatch, server)

    async def place() -> None:
        async with BinanceRestClient(server.rest_url, server.api_key, server.api_secret) as client:
            for client_id in ("wnsl-stale-of-a-closed-trade", "manual-stop"):
                await client.new_algo_order("ETHUSDT", "SELL", "STOP_MARKET", trigger_price="2500",
                                            client_algo_id=client_id)

    asyncio.run(place())
    result = run_session(db, session_id="tidy", mode="live", feed=MarkFeed([], server), config=KEEP_OPEN,
                         symbols=SYMBOLS, rest_url=server.rest_url)
    assert [(d.action, d.symbol) for d in result.decisions] == [("protect", "ETHUSDT")]
    assert [o["clientAlgoId"] for o in server.open_algo_orders()] == ["manual-stop"]


def test_an_order_refused_on_one_symbol_leaves_the_others_trading_and_protected(db, server, capture_events,
                                                                               monkeypatch):
    live_env(monkeypatch, server)
    server.reject_next_order("ETHUSDT", -2019, "Margin is insufficient.")
    result = run_session(db, session_id="refused", mode="live", feed=MarkFeed(capture_events, server),
                         config=KEEP_OPEN, symbols=SYMBOLS, rest_url=server.rest_url)
    assert result.status == "completed"
    [reject] = [d for d in result.decisions if d.action == "reject"]
    assert (reject.symbol, reject.details["code"]) == ("ETHUSDT", -2019) and "Margin is insufficient" in reject.reason
    assert [p.symbol for p in result.open_positions] == ["BTCUSDT"]
    assert sorted(o["orderType"] for o in server.open_algo_orders("BTCUSDT")) == ["STOP_MARKET",
                                                                                  "TAKE_PROFIT_MARKET"]
    assert server.position_amount("ETHUSDT") == 0.0
    # ETH waits out the cooldown: no second attempt within the capture.
    assert sum(o["symbol"] == "ETHUSDT" for o in server.orders) == 1


