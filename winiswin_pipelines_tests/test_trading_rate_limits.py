"""Rate limits against the local Binance server: a 418 ban and a 429 hold every request until
Retry-After, an order refused with 429 is not sent again blindly, failing depth snapshots back off."""

from __future__ import annotations

import asyncio
import time

import pytest

from winiswin_pipelines.marketdata.binance import BinanceAPIError, BinanceRestClient
from winiswin_pipelines.marketdata.feed import BinanceFeed
from winiswin_pipelines.trading.execution import LiveExecutor, OrderRejected
from winiswin_pipelines_tests.binance_server import LocalBinanceServer
from winiswin_pipelines_tests.trading_helpers import T0


@pytest.fixture
def server():
    with LocalBinanceServer(("BTCUSDT",)) as running:
        yield running


async def test_a_418_ban_holds_every_request_until_retry_after(server):
    async with BinanceRestClient(server.rest_url, server.api_key, server.api_secret) as rest:
        await rest.sync_clock()
        server.ban_for(1.5)
        with pytest.raises(BinanceAPIError) as banned:
            await rest.server_time()
        assert banned.value.status == 418 and "retry after 2 s" in banned.value.message
        started = time.monotonic()
        await rest.new_order("BTCUSDT", "BUY", "MARKET", quantity="0.001")  # held until the ban is over
        assert time.monotonic() - started >= 1.0
    assert server.refused_requests == 1 and server.count_requests("/fapi/v1/order") == 1


async def test_an_order_refused_with_429_is_not_resent_blindly(server):
    client = BinanceRestClient(server.rest_url, server.api_key, server.api_secret)
    executor = LiveExecutor(client, await client.exchange_info(), ["BTCUSDT"])
    server.failing["/fapi/v1/order"] = (429, -1003, "Too many requests; current limit exceeded.")
    try:
        with pytest.raises(OrderRejected) as refused:
            await executor.open("BTCUSDT", "LONG", 0.001, 60_000.0, T0, client_id="wnen-429")
        assert refused.value.code == -1003 and not refused.value.uncertain
        del server.failing["/fapi/v1/order"]
        started = time.monotonic()
        await client.server_time()  # the next request waits out Retry-After
        assert time.monotonic() - started >= 0.5
    finally:
        await executor.shutdown()
    assert server.count_requests("/fapi/v1/order") == 1 and server.orders == []


async def test_failing_depth_snapshots_back_off_exponentially(server):
    server.failing["/fapi/v1/depth"] = (503, -1001, "Internal error; unable to process your request.")
    feed = BinanceFeed(["BTCUSDT"], ws_url=server.ws_url, rest_url=server.rest_url)
    events = feed.events()

    async def read() -> None:
        async for _ in events:
            pass

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read(), timeout=3.5)
    await events.aclose()
    # 1 s, then 2 s, ... between attempts (a retry every 100 ms would be ~35 requests).
    assert 1 <= server.count_requests("/fapi/v1/depth") <= 3
