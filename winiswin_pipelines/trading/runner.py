"""Run a trading session from synchronous code: a Dagster op, an asset, a script.

`run_session` builds the executor (paper unless live was asked for AND permitted), the recorder and
the journal, and runs the session on its own event loop. `run_session_in_thread` runs it on a
worker thread so the caller's thread stays free to receive an interrupt (Dagster raises one in
the op's thread when a run is terminated from the UI): the session is then asked to stop, and
the caller waits for it to flush its recorder and write its last heartbeat before re-raising.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import math
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from winiswin_pipelines import settings
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.marketdata.binance import BINANCE_FUTURES_REST, BinanceAPIError
from winiswin_pipelines.marketdata.feed import BookEvent, KlineEvent, MarketFeed
from winiswin_pipelines.marketdata.user_stream import UserDataStream
from winiswin_pipelines.trading import halts
from winiswin_pipelines.trading.execution import (
    Executor,
    LiveExecutor,
    PaperExecutor,
    check_live_permission,
    live_executor,
)
from winiswin_pipelines.trading.funding import FundingSchedule
from winiswin_pipelines.trading.journal import OrderIntents, SessionJournal
from winiswin_pipelines.trading.orders import market_max_quantities
from winiswin_pipelines.trading.recorder import UnifiedTradeRecorder
from winiswin_pipelines.trading.session import SessionConfig, SessionResult, TradingSession

MODES = ("paper", "live", "backtest")
STOP_GRACE_SECONDS = 120.0
DEADLINE_GRACE_SECONDS = 5.0  # after max_duration, for a session to reach its next stop check
log = logging.getLogger(__name__)


def check_mode(mode: str) -> None:
    """Refuse unknown modes, and live mode without both Binance keys and WINISWIN_LIVE_TRADING=1."""
    if mode not in MODES:
        raise ValueError(f"trading mode must be one of {MODES}, got {mode!r}")
    if mode == "live":
        check_live_permission(settings.live_trading_opt_in(), settings.binance_api_key(), settings.binance_api_secret())


async def _executor(mode: str, symbols: list[str], rest_url: str, leverage: int,
                    paper: PaperExecutor | None = None) -> Executor:
    if mode != "live":
        return paper or PaperExecutor()
    return await live_executor(rest_url, symbols, opt_in=settings.live_trading_opt_in(),
                               api_key=settings.binance_api_key(), api_secret=settings.binance_api_secret(),
                               leverage=leverage)


async def _market_max_quantities(executor: Executor) -> dict[str, float]:
    """Live: each symbol's MARKET_LOT_SIZE maximum (an entry is never larger than one MARKET order may be)."""
    if not isinstance(executor, LiveExecutor):
        return {}
    try:
        return market_max_quantities(await executor.client.exchange_info())
    except BinanceAPIError as error:  # the exchange refuses the entry itself then, on its symbol only
        log.warning("MARKET_LOT_SIZE unknown (%s); entries are not capped by it", error.message)
        return {}


async def run_session_async(
    manager: DatabaseManager, *, session_id: str, mode: str, feed: MarketFeed, config: SessionConfig,
    symbols: list[str], run_id: str | None = None, stop: threading.Event | None = None,
    rest_url: str = BINANCE_FUTURES_REST, ws_url: str | None = None,
    paper: PaperExecutor | None = None, funding: FundingSchedule | None = None,
) -> SessionResult:
    """One session of `mode` ("paper", "live", "backtest"); trades are recorded with that source. Live
    entries are committed to `order_intents` before they are sent; with `ws_url`, a live session follows
    the account's user-data stream there. Paper and backtest sessions fill through `paper` (default
    `PaperExecutor()`: the regular-tier taker fee) and are charged funding from `funding`. With
    `config.max_duration` the session ends on time, even while the exchange holds its calls."""
    check_mode(mode)
    stop = stop or threading.Event()
    try:
        return await _within_max_duration(_start_and_run(
            manager, session_id=session_id, mode=mode, feed=feed, config=config, symbols=symbols, run_id=run_id,
            stop=stop, rest_url=rest_url, ws_url=ws_url, paper=paper, funding=funding,
        ), stop, config.max_duration)
    finally:
        # The async pool belongs to this event loop; the next session runs on another one.
        await manager.async_engine.dispose()


async def _start_and_run(
    manager: DatabaseManager, *, session_id: str, mode: str, feed: MarketFeed, config: SessionConfig,
    symbols: list[str], run_id: str | None, stop: threading.Event, rest_url: str, ws_url: str | None,
    paper: PaperExecutor | None, funding: FundingSchedule | None,
) -> SessionResult:
    executor = await _executor(mode, symbols, rest_url, math.ceil(config.risk.max_leverage), paper)
    session = TradingSession(
        session_id=session_id, feed=feed, executor=executor,
        recorder=UnifiedTradeRecorder(manager, source=mode),
        journal=SessionJournal(manager, session_id, mode, run_id), config=config, stop=stop,
        funding=funding if mode != "live" else None,  # live: the exchange charges it
        intents=OrderIntents(manager, mode, session_id),
        user_stream=UserDataStream(executor.client, ws_url) if ws_url and isinstance(executor, LiveExecutor)
        else None,
        market_max_quantity=await _market_max_quantities(executor),
    )
    return await session.run()


async def _within_max_duration(
    run_session: Coroutine[Any, Any, SessionResult], stop: threading.Event, max_duration: dt.timedelta | None,
) -> SessionResult:
    """The session's start and run, ended on time: at `max_duration` it is asked to stop (it ends at its
    next check, its last heartbeat written); one still held `DEADLINE_GRACE_SECONDS` later (a call the
    exchange keeps waiting, e.g. Retry-After during a ban, at start or later) is cancelled and reported.
    Nothing is lost by that: live entries are written ahead to `order_intents` and looked up at the
    next start, and the protection of open positions lives on the exchange."""
    run = asyncio.ensure_future(run_session)
    if max_duration is None:
        return await run
    done, _ = await asyncio.wait({run}, timeout=max_duration.total_seconds())
    if not done:
        stop.set()
        done, _ = await asyncio.wait({run}, timeout=DEADLINE_GRACE_SECONDS)
    if not done:
        run.cancel()  # its clean-up gets the same grace: it may wait on the exchange too
        await asyncio.wait({run}, timeout=DEADLINE_GRACE_SECONDS)
        raise SessionOverran(f"the session did not end within max_duration {max_duration} plus "
                             f"{DEADLINE_GRACE_SECONDS:g} s (the exchange held its calls); it was cancelled")
    return run.result()


class SessionOverran(RuntimeError):
    """A bounded session that could not stop by itself in time (the exchange held its calls) was cancelled."""


def run_session(manager: DatabaseManager, **kwargs) -> SessionResult:
    """`run_session_async` on a new event loop in this thread."""
    return asyncio.run(run_session_async(manager, **kwargs))


def run_session_in_thread(manager: DatabaseManager, **kwargs) -> SessionResult:
    """`run_session` on a worker thread; an exception in this thread (an interrupt) stops it cleanly first."""
    stop = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="trading-session")
    future = pool.submit(run_session, manager, stop=stop, **kwargs)
    try:
        while True:
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                continue
    except BaseException:
        stop.set()
        concurrent.futures.wait([future], timeout=STOP_GRACE_SECONDS)
        raise
    finally:
        pool.shutdown(wait=False)


class NoEvents:
    """A feed with nothing to say: a session on it does its start-up work and, flattening on end, closes."""

    async def events(self) -> AsyncIterator[KlineEvent | BookEvent]:
        return
        yield


def flatten_and_halt(manager: DatabaseManager, *, rest_url: str = BINANCE_FUTURES_REST, note: str = "",
                     run_id: str | None = None) -> tuple[halts.Halt, SessionResult]:
    """Halt live trading (recorded first: no entry and no new live session from now until it is cleared),
    then close every live position: one live session that resumes and reconciles what the exchange
    holds (adopting what no trade explains), closes each position reduce-only after cancelling its
    protection, records the exits (reason `flatten_and_halt`), and ends. Live permission is still needed
    to close anything (`LiveTradingRefused` after the halt is recorded)."""
    halt = halts.halt_trading(manager, halts.FLATTEN_AND_HALT, details={"note": note, "run_id": run_id})
    check_mode("live")
    session_id = f"flatten-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{(run_id or 'manual')[:8]}"
    config = SessionConfig(flatten_on_end=True, flatten_reason=halts.FLATTEN_AND_HALT, heartbeat_seconds=1.0)
    result = run_session(manager, session_id=session_id, mode="live", feed=NoEvents(), config=config, symbols=[],
                         run_id=run_id, rest_url=rest_url)
    return halt, result
