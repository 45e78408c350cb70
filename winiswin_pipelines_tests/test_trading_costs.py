"""Honest costs and paper apart from live: the same exchange filters for paper as for live, fills walking
the book, fees at Binance's regular tier (live: the account's commissionRate), funding from history."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from winiswin_pipelines.db.entry_times import upsert_entry_time
from winiswin_pipelines.trading import repository
from winiswin_pipelines.trading.events import TradeOpened
from winiswin_pipelines.trading.execution import (
    TAKER_FEE_RATE,
    BookSide,
    OrderRejected,
    PaperExecutor,
    live_executor,
    walk_book,
)
from winiswin_pipelines.trading.funding import FundingSchedule, funding_payment, grid_times
from winiswin_pipelines.trading.recorder import UnifiedTradeRecorder
from winiswin_pipelines.trading.risk import Position
from winiswin_pipelines_tests.binance_server import LocalBinanceServer

UTC = dt.UTC
T0 = dt.datetime(2024, 7, 18, 23, 58, tzinfo=UTC)


def _position(quantity: float, side: str = "LONG") -> Position:
    return Position("p-1", "BTCUSDT", side, quantity, 60_000.0, T0, 59_000.0, 61_500.0)


def test_default_fees_are_binances_regular_tier():
    assert TAKER_FEE_RATE == 0.0005 and PaperExecutor().fee_rate == 0.0005


def test_paper_fills_go_through_the_live_filters():
    paper = PaperExecutor(slippage_bps=0.0)
    fill = asyncio.run(paper.open("BTCUSDT", "LONG", 0.12345678, 60_000.0, T0))
    assert fill.quantity == 0.123  # down to BTCUSDT's step size
    assert fill.fees == pytest.approx(0.123 * 60_000.0 * 0.0005)
    with pytest.raises(OrderRejected, match="notional .* below the minimum 100"):  # BTCUSDT's MIN_NOTIONAL
        asyncio.run(paper.open("BTCUSDT", "LONG", 0.001, 60_000.0, T0))
    with pytest.raises(OrderRejected, match="above the MARKET maximum 120"):
        asyncio.run(paper.open("BTCUSDT", "SHORT", 150.0, 60_000.0, T0))
    with pytest.raises(OrderRejected, match="below the minimum 0.001"):
        asyncio.run(paper.open("ETHUSDT", "LONG", 0.0004, 3_000.0, T0))
    # A reduce-only close is exempt from the minimum notional, as on Binance: a small position can be closed.
    close = asyncio.run(paper.close(_position(0.001), 60_000.0, T0))
    assert close.quantity == 0.001


def test_paper_prices_sit_on_the_tick_grid_against_the_trader():
    paper = PaperExecutor(slippage_bps=1.0)
    buy = asyncio.run(paper.open("BTCUSDT", "LONG", 0.1, 60_000.03, T0))
    sell = asyncio.run(paper.close(_position(0.1), 60_000.03, T0))
    assert buy.price == 60_006.1 and sell.price == 59_994.0  # 1 bp away, then rounded up / down to 0.1
    assert buy.slippage == pytest.approx((60_006.1 - 60_000.03) * 0.1)
    assert sell.slippage == pytest.approx((60_000.03 - 59_994.0) * 0.1)


def test_market_orders_walk_the_book():
    asks = BookSide([100.0, 100.5, 101.0], [1.0, 2.0, 1.0])
    assert walk_book(asks, 0.5, 10) == 100.0
    assert walk_book(asks, 2.0, 10) == pytest.approx((100.0 + 100.5) / 2)
    # Beyond the levels shown: the rest at the last level moved further away.
    assert walk_book(asks, 5.0, 10) == pytest.approx((100 + 201 + 101 + 1 * 101 * 1.001) / 5)
    bids = BookSide([99.0, 98.0], [1.0, 1.0])
    assert walk_book(bids, 3.0, 100) == pytest.approx((99 + 98 + 98 * 0.99) / 3)
    assert walk_book(BookSide([], []), 1.0, 10) is None
    fill = asyncio.run(PaperExecutor().open("ETHUSDT", "LONG", 3.0, 100.0, T0, book=asks))
    assert fill.price == pytest.approx(100.34) and fill.slippage == pytest.approx((100.34 - 100.0) * 3.0)


def test_funding_a_long_pays_a_short_receives():
    assert funding_payment(1, 2.0, 30_000.0, 0.0001) == pytest.approx(-6.0)
    assert funding_payment(-1, 2.0, 30_000.0, 0.0001) == pytest.approx(6.0)
    assert funding_payment(1, 2.0, 30_000.0, -0.0002) == pytest.approx(12.0)


def test_funding_schedule_reports_stored_assumed_and_missing_times():
    rows = [("BTCUSDT", dt.datetime(2024, 7, 19, 0, tzinfo=UTC), 0.0003, 64_000.0)]
    assert grid_times(T0 - dt.timedelta(hours=8), T0 + dt.timedelta(hours=8, minutes=2)) == [  # (15:58, 08:00]
        dt.datetime(2024, 7, 18, 16, tzinfo=UTC), dt.datetime(2024, 7, 19, 0, tzinfo=UTC),
        dt.datetime(2024, 7, 19, 8, tzinfo=UTC)]
    events = FundingSchedule.of(rows, assumed_rate=0.0001).events("BTCUSDT", T0, T0 + dt.timedelta(hours=9))
    assert [(e.time.hour, e.rate, e.mark_price) for e in events] == [(0, 0.0003, 64_000.0), (8, None, None)]
    assert FundingSchedule.of(rows).events("BTCUSDT", T0, T0 + dt.timedelta(minutes=1)) == []


async def test_paper_resumes_its_own_fill_times_not_the_live_ones(db):
    live_fill, paper_fill = T0 - dt.timedelta(hours=1), T0
    for source, fill in (("live", live_fill), ("paper", paper_fill)):
        recorder = UnifiedTradeRecorder(db, source=source)
        await recorder.start()
        await recorder.record_entry(TradeOpened(f"{source}-1", "BTCUSDT", "LONG", fill, 60_000.0, 0.1))
        await recorder.close()
    await db.async_engine.dispose()
    with db.engine.begin() as conn:
        upsert_entry_time(conn, "BTCUSDT", live_fill - dt.timedelta(minutes=5))  # the live position's, moved
    [live] = repository.open_positions(db, "live")
    [paper] = repository.open_positions(db, "paper")
    assert live.entry_time == live_fill - dt.timedelta(minutes=5) and paper.entry_time == paper_fill


def test_live_estimates_fees_at_the_accounts_commission_rate(monkeypatch):
    with LocalBinanceServer(("BTCUSDT",)) as server:
        server.account.taker_rate = 0.00036  # a VIP tier
        executor = asyncio.run(live_executor(server.rest_url, ["BTCUSDT"], opt_in=True, api_key=server.api_key,
                                             api_secret=server.api_secret))

        async def enter():
            try:
                await executor._prepare("BTCUSDT")
                return executor.taker_rate("BTCUSDT"), executor.taker_rate("ETHUSDT")
            finally:
                await executor.shutdown()

        assert asyncio.run(enter()) == (0.00036, TAKER_FEE_RATE)
        assert server.count_requests("/fapi/v1/commissionRate") == 1
