"""The Binance client against the local server on loopback: REST, signing, dropped connections, gaps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from winiswin_pipelines.marketdata.binance import BinanceAPIError, BinanceRestClient
from winiswin_pipelines.marketdata.feed import (
    BinanceFeed,
    BookEvent,
    FeedWriter,
    KlineEvent,
    MarketEvent,
    kline_from_rest,
)
from winiswin_pipelines_tests.binance_server import LocalBinanceServer

SYMBOLS = ("BTCUSDT", "ETHUSDT")


@pytest.fixture
def server() -> Iterator[LocalBinanceServer]:
    with LocalBinanceServer(SYMBOLS) as running:
        yield running


async def collect(feed: BinanceFeed, until: Callable[[list[MarketEvent]], bool], timeout: float = 15.0,
                  on_event: Callable[[MarketEvent, list[MarketEvent]], None] | None = None) -> list[MarketEvent]:
    events: list[MarketEvent] = []
    generator = feed.events()
    try:
        async with asyncio.timeout(timeout):
            async for event in generator:
                events.append(event)
                if on_event:
                    on_event(event, events)
                if until(events):
                    return events
    finally:
        await generator.aclose()
    return events


def assert_books_match_server(events: list[MarketEvent], server: LocalBinanceServer, depth: int = 10) -> None:
    books = [e for e in events if isinstance(e, BookEvent)]
    assert books
    for book in books:
        bid_prices, bid_sizes, ask_prices, ask_sizes = server.book_at(book.symbol, book.last_update_id)
        assert (book.bid_prices, book.bid_sizes, book.ask_prices, book.ask_sizes) == (
            bid_prices[:depth], bid_sizes[:depth], ask_prices[:depth], ask_sizes[:depth]), book
        assert (book.best_bid, book.best_ask) == (bid_prices[0], ask_prices[0])


def assert_closed_klines_complete(events: list[MarketEvent], server: LocalBinanceServer) -> dict[str, int]:
    """Every closed bar since the first one seen arrives exactly once, equal to the server's bar."""
    counts = {}
    for symbol in SYMBOLS:
        closed = [e for e in events if isinstance(e, KlineEvent) and e.closed and e.symbol == symbol]
        expected = [kline_from_rest(symbol, "1m", row) for row in server.closed_bars(symbol, "1m")]
        first = next(i for i, bar in enumerate(expected) if bar.open_time == closed[0].open_time)
        assert closed == expected[first:first + len(closed)]
        counts[symbol] = len(closed)
    return counts


async def test_public_rest(server):
    async with BinanceRestClient(server.rest_url) as rest:
        info = await rest.exchange_info()
        assert [s["symbol"] for s in info["symbols"]] == list(SYMBOLS)
        assert {f["filterType"] for f in info["symbols"][0]["filters"]} >= {"PRICE_FILTER", "LOT_SIZE", "MIN_NOTIONAL"}
        snapshot = await rest.depth("BTCUSDT", limit=5)
        assert len(snapshot["bids"]) == len(snapshot["asks"]) == 5 and snapshot["lastUpdateId"] > 0
        await asyncio.sleep(0.8)  # the server's clock closes a 1m bar every 60 ticks
        closed = await rest.closed_klines_since("BTCUSDT", "1m", 0)
        assert closed and closed == server.closed_bars("BTCUSDT", "1m")[: len(closed)]
        with pytest.raises(BinanceAPIError, match="code -5000"):
            await rest._request("GET", "/fapi/v1/nothing")


async def test_signed_requests_are_hmac_signed_and_secrets_stay_out_of_errors(server):
    async with BinanceRestClient(server.rest_url, server.api_key, server.api_secret) as rest:
        order = await rest.new_order("BTCUSDT", "BUY", "LIMIT", quantity=0.002, price=60000.5, time_in_force="GTC",
                                     client_order_id="t-1")
        assert order["status"] == "NEW" and order["clientOrderId"] == "t-1"
        assert server.orders[-1]["quantity"] == "0.002" and server.orders[-1]["price"] == "60000.5"
        assert server.orders[-1]["recvWindow"] == "5000"
        assert (await rest.signed_request("GET", "/fapi/v2/balance"))[0]["asset"] == "USDT"
    async with BinanceRestClient(server.rest_url, server.api_key, "not-the-secret") as wrong:
        with pytest.raises(BinanceAPIError) as refused:
            await wrong.new_order("BTCUSDT", "SELL", "MARKET", quantity=0.001)
        assert refused.value.code == -1022
        assert "not-the-secret" not in str(refused.value) and "not-the-secret" not in repr(wrong)
    async with BinanceRestClient(server.rest_url) as unsigned:
        with pytest.raises(PermissionError, match="API key"):
            await unsigned.new_order("BTCUSDT", "SELL", "MARKET", quantity=0.001)
    assert len(server.orders) == 1


async def test_signed_request_resyncs_the_clock_when_binance_says_the_timestamp_is_off(server):
    async with BinanceRestClient(server.rest_url, server.api_key, server.api_secret) as rest:
        await rest.sync_clock()
        server.time_offset_ms = 60_000  # the exchange's clock jumps a minute ahead of ours
        await rest.new_order("ETHUSDT", "BUY", "MARKET", quantity=0.01)
    assert server.count_requests("/fapi/v1/time") == 2
    assert server.count_requests("/fapi/v1/order") == 2  # refused with -1021 once, then accepted


async def test_feed_books_follow_the_exchange_book(server):
    feed = BinanceFeed(SYMBOLS, ws_url=server.ws_url, rest_url=server.rest_url)
    events = await collect(feed, lambda ev: sum(isinstance(e, BookEvent) for e in ev) >= 200)
    assert_books_match_server(events, server)
    assert {e.symbol for e in events if isinstance(e, BookEvent)} == set(SYMBOLS)
    assert feed.tickers.keys() == set(SYMBOLS) and feed.stream.stats.snapshots >= 2


async def test_dropped_connection_reconnects_and_backfills_missed_klines(server):
    feed = BinanceFeed(SYMBOLS, ws_url=server.ws_url, rest_url=server.rest_url)
    dropped = []

    def drop_after_two_bars(event: MarketEvent, events: list[MarketEvent]) -> None:
        closed = sum(isinstance(e, KlineEvent) and e.closed for e in events)
        if not dropped and closed >= 4:
            # Refused long enough that at least one bar closes while the client is away.
            dropped.append(server.drop_connections(refuse_for=0.6))

    def enough(events: list[MarketEvent]) -> bool:
        return bool(dropped) and sum(isinstance(e, KlineEvent) and e.closed for e in events) >= 14

    events = await collect(feed, enough, on_event=drop_after_two_bars)
    assert dropped == [1] and feed.stream.stats.reconnects == 1 and feed.stream.stats.connections == 2
    counts = assert_closed_klines_complete(events, server)
    assert min(counts.values()) >= 6
    assert_books_match_server(events, server)
    assert server.count_requests("/fapi/v1/klines") >= 2  # the backfill after the reconnect


async def test_sequence_gap_resynchronises_the_book_and_no_stale_book_is_used(server):
    feed = BinanceFeed(SYMBOLS, ws_url=server.ws_url, rest_url=server.rest_url)
    gap_at: list[int] = []

    def inject(event: MarketEvent, events: list[MarketEvent]) -> None:
        if not gap_at and isinstance(event, BookEvent) and event.symbol == "BTCUSDT":
            server.inject_gap("BTCUSDT")
            gap_at.append(len(events))

    def enough(events: list[MarketEvent]) -> bool:
        return bool(gap_at) and sum(isinstance(e, BookEvent) and e.symbol == "BTCUSDT" for e in events[gap_at[0]:]) >= 50

    events = await collect(feed, enough, on_event=inject)
    assert feed.stream.stats.gaps == {"BTCUSDT": 1}
    assert server.count_requests("/fapi/v1/depth") >= 3  # BTC and ETH at start, BTC again after the gap
    assert_books_match_server(events, server)  # every book, before and after the gap, is the exchange's


async def test_live_feed_writes_closed_klines_and_books_to_the_hot_tables(server, db):
    feed = BinanceFeed(("BTCUSDT",), ws_url=server.ws_url, rest_url=server.rest_url)
    events = await collect(feed, lambda ev: sum(isinstance(e, KlineEvent) and e.closed for e in ev) >= 3)
    writer = FeedWriter(db, source="binance", book_cadence=None)
    for event in events:
        await writer.write(event)
    await writer.flush()
    closed = [e for e in events if isinstance(e, KlineEvent) and e.closed]
    with db.engine.connect() as conn:
        stored = conn.execute(text("SELECT open_time, close, trade_count FROM klines ORDER BY open_time")).all()
        books = conn.execute(text("SELECT count(*) FROM book_snapshots WHERE source = 'binance'")).scalar()
    assert [tuple(row) for row in stored] == [(e.open_time, e.close, e.trade_count) for e in closed]
    assert books == sum(isinstance(e, BookEvent) for e in events)
