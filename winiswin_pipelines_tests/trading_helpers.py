"""What the trading tests share (plain helpers; the fixtures are in conftest.py): the symbols and session
configs they trade, feeds that play recorded or made-up events, orders sent by hand to the local Binance
server, and the trades they read back."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import time
from dataclasses import replace

import dagster as dg
from sqlalchemy import select

from winiswin_pipelines.db.models import Trade
from winiswin_pipelines.defs.trading import trading_session_supervisor
from winiswin_pipelines.marketdata.binance import BinanceRestClient
from winiswin_pipelines.marketdata.feed import BookEvent
from winiswin_pipelines.trading.events import TradeClosed, TradeOpened
from winiswin_pipelines.trading.execution import LiveExecutor
from winiswin_pipelines.trading.recorder import UnifiedTradeRecorder
from winiswin_pipelines.trading.session import SessionConfig
from winiswin_pipelines.trading.strategy import StrategyConfig
from winiswin_pipelines_tests.binance_server import LocalBinanceServer

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
# The bundled captures are 8 minutes long: the short-horizon profile trades them.
REPLAY = SessionConfig(strategy=StrategyConfig.short_horizon(), interval="1m", flatten_on_end=True)
KEEP_OPEN = replace(REPLAY, flatten_on_end=False)
T0 = dt.datetime(2024, 7, 19, tzinfo=dt.UTC)


class ListFeed:
    """Recorded events, in order, with `actions[i]` run (and awaited if it returns an awaitable) before
    event i (len(events): after the last); with `then_wait` it then stays silent, as a live feed with
    nothing to say (for a minute at most, so a test that expects an interrupt fails instead of hanging)."""

    def __init__(self, events, *, actions=None, then_wait=False):
        self._events, self._actions, self._then_wait = events, actions or {}, then_wait

    async def events(self):
        for number, event in enumerate([*self._events, None]):
            if number in self._actions and inspect.isawaitable(outcome := self._actions[number]()):
                await outcome
            if event is not None:
                yield event
        if self._then_wait:
            await asyncio.sleep(60)


class MarkFeed(ListFeed):
    """Recorded events, and before each book event the server's mark price moves to its mid: the
    exchange fills and triggers where the recorded market was."""

    def __init__(self, events, server, **kwargs):
        super().__init__(events, **kwargs)
        self._server = server

    async def events(self):
        async for event in super().events():
            if isinstance(event, BookEvent) and event.best_bid and event.best_ask:
                self._server.set_mark_price(event.symbol, round((event.best_bid + event.best_ask) / 2, 1))
            yield event


def live_env(monkeypatch, server: LocalBinanceServer) -> None:
    """The local server's keys and the opt-in: what live trading needs."""
    monkeypatch.setenv("BINANCE_API_KEY", server.api_key)
    monkeypatch.setenv("BINANCE_API_SECRET", server.api_secret)
    monkeypatch.setenv("WINISWIN_LIVE_TRADING", "1")


def book(symbol: str, price: float, at: dt.datetime) -> BookEvent:
    """A one-level book around `price`."""
    return BookEvent(symbol, at, None, 1, price - 0.05, 1.0, price + 0.05, 1.0, [price], [1.0], [price], [1.0])


def quiet(symbol: str = "BTCUSDT", price: float = 60_000.0, seconds: int = 1) -> list[BookEvent]:
    """One book event: a feed with (almost) nothing to say."""
    return [book(symbol, price, T0 + dt.timedelta(seconds=seconds))]


async def executor_for(server: LocalBinanceServer, **kwargs) -> LiveExecutor:
    client = BinanceRestClient(server.rest_url, server.api_key, server.api_secret)
    return LiveExecutor(client, await client.exchange_info(), SYMBOLS, **kwargs)


async def send_by_hand(server: LocalBinanceServer, symbol: str, side: str, quantity: str, name: str = "") -> None:
    """A MARKET order no session sent (a client id without our prefix)."""
    async with BinanceRestClient(server.rest_url, server.api_key, server.api_secret) as client:
        await client.new_order(symbol, side, "MARKET", quantity=quantity, client_order_id=f"by-hand-{side}{name}")


def by_hand(server: LocalBinanceServer, symbol: str, side: str, quantity: str) -> None:
    asyncio.run(send_by_hand(server, symbol, side, quantity))


def session_actions(server: LocalBinanceServer, *steps):
    """An action for ListFeed: wait for the session's user stream, run `steps` (awaitable or not),
    leave the session a second to take the events."""
    async def act() -> None:
        deadline = time.monotonic() + 5
        while server.user_connections_opened < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for step in steps:
            outcome = step()
            if asyncio.iscoroutine(outcome):
                await outcome
        await asyncio.sleep(1.0)
    return act


def trades(db, prefix: str) -> list[Trade]:
    """The trades whose uid starts with `prefix` (a session id), in uid order."""
    with db.session() as session:
        return session.scalars(select(Trade).where(Trade.trade_uid.startswith(prefix)).order_by(Trade.trade_uid)).all()


def live_trades(db) -> list[Trade]:
    with db.session() as session:
        return session.scalars(select(Trade).where(Trade.source == "live").order_by(Trade.trade_uid)).all()


def lost_today(db) -> None:
    """An earlier live session of the day lost 600 USDT: one closed trade, through the recorder."""
    async def record() -> None:
        recorder = UnifiedTradeRecorder(db, source="live")
        await recorder.start()
        now = dt.datetime.now(dt.UTC)
        await recorder.record_entry(TradeOpened(trade_uid="earlier-BTCUSDT-0001", symbol="BTCUSDT", side="LONG",
                                                entry_time=now - dt.timedelta(minutes=5), entry_price=60_000.0,
                                                quantity=0.1))
        await recorder.record_exit(TradeClosed(trade_uid="earlier-BTCUSDT-0001", symbol="BTCUSDT", exit_time=now,
                                               exit_price=54_000.0, pnl=-600.0, pnl_pct=-0.1))
        await recorder.close()
        await db.async_engine.dispose()

    asyncio.run(record())


def supervisor_tick(instance: dg.DagsterInstance):
    with dg.build_sensor_context(instance=instance, cursor=None) as context:
        return trading_session_supervisor(context)
