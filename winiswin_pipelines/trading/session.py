"""The trading session: one loop from a market feed through strategy, risk and execution to the recorder.

The same loop serves live sessions (BinanceFeed), paper sessions over recorded captures
(ReplayFeed) and backtests (StoredFeed): only the feed, the executor and the recorder's source
differ, so there is one copy of the trading logic.

For every event, in exchange-time order:
- a book event updates the symbol's best bid/ask and checks its position's stop loss / take
  profit against them (a long exits at the bid, a short at the ask);
- a closed kline of the traded interval checks the position against the bar's range (a gap
  through a level fills at the bar's open; a bar touching both levels counts as the stop), is
  appended to the symbol's bar history, and then lets the strategy decide on an entry;
- every event checks the time stop: a position held `risk.time_stop` (2 h) since its fill is
  closed, whatever its PnL. A live position's fill time comes from `position_entry_times` after a
  restart (paper and backtest keep theirs on their own trades), so the stop survives restarts.
- simulated sessions (paper, backtest) fill an entry at the first event of its symbol after the
  signal, never at the signal bar's own close: the next book (walking its levels) or the next
  bar's open; stops sit around the real fill, as live ones do. They charge funding
  (`trading.funding`) at each funding time a position is held across.
Time is the events' exchange time, so replays and backtests behave as live sessions would.

With an executor that protects positions on the exchange (live), an entry's intent is committed
to PostgreSQL (`order_intents`) before its order is sent (no intent, no order); once it fills, its stop loss and take profit are moved
to the real fill price (same distances) and placed on the exchange at once; a close cancels them
first. A session that starts records the intended entries that filled while no session knew of
them, and makes the exchange hold exactly the protection of every open position. An order Binance
refuses (e.g. -2019 margin insufficient) is recorded as a `reject` decision with its code and
message and affects only its symbol: no new entry there for `reject_cooldown`, a failed close is
tried again after a back-off, and every other position stays watched and protected.
With an exchange (live), the exchange is the source of truth: at start and every
`reconcile_seconds` (a minute) the session reads its positions, balance, open orders and algo
orders. A position no trade explains is adopted (an OPEN trade, strategy `adopted`, at the
exchange's entry price, protected at the default stop distances); a position the session holds and
the exchange no longer does is closed with its real exit fills (`/fapi/v1/userTrades`) and reason
(stop loss, take profit, liquidation, manual). Each change is a `reconcile` or `adopt` decision.
With a user-data stream (live), the account's events drive what the session did not do itself:
a fill that reduces a position (a stop loss or take profit that fired, a liquidation, a close by
hand) closes it, or records a partial exit (`record_partial_exit`), with Binance's commission (`n`)
and realised PnL (`rp`); `ALGO_UPDATE` says which protective order fired or expired;
`ACCOUNT_UPDATE` keeps the wallet balance and records funding fees (`FUNDING_FEE`) on the position.
After the stream reconnects (events may have been missed) the session reconciles at once.
Protection stays while a position is open: a stop or take profit the exchange expired or rejected
(`ALGO_UPDATE`), or that a reconciliation finds missing, is placed again, with back-off while that
fails (`protection_retry_seconds`), each attempt under its own `clientAlgoId` (`orders.client_order_id`
numbered), only what is missing. Start-up places the protection of many positions concurrently
(the executor bounds the requests in flight). Live entries are never larger than one MARKET order may be
(`MARKET_LOT_SIZE`). Halts (`trading.halts`, in PostgreSQL, read at every heartbeat) stop live entries
while in force; the daily loss limit records one until 00:00 UTC, and a drawdown of
`RiskConfig.max_drawdown` from the peak equity records an open-ended one, closes every position and
ends the session ("halted").
A feed with a history (BinanceFeed's REST warm-up) first fills the indicators' warm-up, so a live
session can trade from its first closed bar instead of waiting `min_bars` bars.

The session writes a heartbeat (`trading_sessions`) every `heartbeat_seconds` of wall time and its
decisions (`trading_decisions`) with it, records trades through `UnifiedTradeRecorder`, and stops
at the end of the feed, after `max_events` or `max_duration`, or when `stop` is set (a Dagster
terminate). On the way out it flushes the recorder: every fill the session acted on is durable
and open positions stay recorded as OPEN with their fill times, to be resumed by the next session
(or closed first with `flatten_on_end`, as backtests and replays do at the end of their data).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import pandas as pd
from sqlalchemy.exc import DBAPIError

from winiswin_pipelines.db.models import TradeStatus
from winiswin_pipelines.marketdata.feed import BookEvent, KlineEvent, MarketFeed
from winiswin_pipelines.marketdata.user_stream import CONNECTED
from winiswin_pipelines.times import from_epoch_ms
from winiswin_pipelines.trading.events import TradeClosed, TradeOpened, TradePartiallyClosed
from winiswin_pipelines.trading.execution import (
    WOULD_TRIGGER_NOW,
    AccountState,
    BookSide,
    ExchangePosition,
    Executor,
    Fill,
    OrderRejected,
)
from winiswin_pipelines.trading.funding import FundingEvent, FundingSchedule, funding_payment
from winiswin_pipelines.trading.halts import DAILY_LOSS_LIMIT, MAX_DRAWDOWN, Halt, next_utc_midnight
from winiswin_pipelines.trading.journal import Decision, OrderIntents, SessionJournal
from winiswin_pipelines.trading.model_gate import ModelChoice, ModelGate
from winiswin_pipelines.trading.orders import ROLES, belongs_to, client_order_id, is_ours, stem_of
from winiswin_pipelines.trading.recorder import UnifiedTradeRecorder
from winiswin_pipelines.trading.risk import (
    Position,
    RiskConfig,
    can_open,
    capped_quantity,
    daily_loss_reached,
    drawdown_reached,
    gross_pnl,
    position_size,
    price_exit,
    stop_levels,
    time_stop_due,
)
from winiswin_pipelines.trading.strategy import STRATEGY_NAME, StrategyConfig, evaluate

ADOPTED_STRATEGY = "adopted"
PROTECTION_ROLES = {f"wn{ROLES[role]}": role for role in ("stop_loss", "take_profit")}  # client id prefix -> role


@runtime_checkable
class UserStream(Protocol):
    """The account's events (`marketdata.user_stream.UserDataStream`)."""

    def events(self) -> AsyncIterator[dict[str, Any]]: ...

log = logging.getLogger(__name__)
BAR_COLUMNS = ("open_time", "open", "high", "low", "close", "volume")


@runtime_checkable
class WarmUpFeed(Protocol):
    """A feed that can hand over recent closed bars before its stream starts (BinanceFeed, over REST)."""

    async def warm_up(self, bars: int) -> list[KlineEvent]: ...


@dataclass(frozen=True)
class SessionConfig:
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    interval: str | None = None  # kline interval traded; None: whatever closed klines the feed sends
    max_events: int | None = None
    max_duration: dt.timedelta | None = None
    trade_from: dt.datetime | None = None  # earlier events only warm up the indicators (backtests)
    flatten_on_end: bool = False  # close what is open when the feed ends
    flatten_reason: str = "end_of_data"  # the exit reason of those closes
    resume_open_positions: bool = True  # take over the OPEN trades of this source left by earlier sessions
    heartbeat_seconds: float = 5.0
    book_stale_after: dt.timedelta = dt.timedelta(seconds=5)
    reject_cooldown: dt.timedelta = dt.timedelta(minutes=15)  # no new entry on a symbol after a refused order
    close_retry_seconds: tuple[float, float] = (1.0, 60.0)  # back-off between attempts to close a position
    reconcile_seconds: float = 60.0  # live: how often the session compares itself with the exchange
    protection_retry_seconds: tuple[float, float] = (1.0, 60.0)  # back-off between re-placements of lost protection
    model: ModelChoice | None = None  # entries gated by the signal model (`trading.model_gate`); None: rules only


@dataclass(frozen=True)
class ClosedTrade:
    trade_uid: str
    symbol: str
    side: str
    entry_time: dt.datetime
    exit_time: dt.datetime
    entry_price: float
    exit_price: float
    quantity: float
    pnl: float  # USDT, after fees and funding
    pnl_pct: float  # fraction of the entry notional
    fees: float
    exit_reason: str
    funding: float = 0.0  # USDT received (> 0) or paid (< 0) while held
    slippage: float = 0.0  # USDT lost against the reference prices of the entry and exit fills (simulated)


@dataclass
class SessionResult:
    session_id: str
    status: str
    events: int
    bars: int
    decisions: list[Decision]
    closed: list[ClosedTrade]
    open_positions: list[Position]
    starting_equity: float
    equity: float
    recorder: dict[str, Any]
    wall_seconds: float
    first_event_time: dt.datetime | None = None
    last_event_time: dt.datetime | None = None
    warm_up_bars: int = 0
    reconciliation: dict[str, Any] = field(default_factory=dict)  # the last one: what the exchange held, what changed
    funding_times: dict[str, int] = field(default_factory=dict)  # simulated: funding times charged, assumed, unknown


@dataclass
class _Book:
    bid: float
    ask: float
    time: dt.datetime
    asks: BookSide | None = None  # the levels a buy takes
    bids: BookSide | None = None


def kline_end(event: KlineEvent) -> dt.datetime:
    """When a kline's bar is over (Binance close times are the last millisecond inside the bar)."""
    return event.close_time + dt.timedelta(milliseconds=1)


class TradingSession:
    def __init__(self, *, session_id: str, feed: MarketFeed, executor: Executor, recorder: UnifiedTradeRecorder,
                 journal: SessionJournal, config: SessionConfig = SessionConfig(),
                 stop: threading.Event | None = None, intents: OrderIntents | None = None,
                 user_stream: UserStream | None = None, market_max_quantity: dict[str, float] | None = None,
                 funding: FundingSchedule | None = None):
        self.session_id = session_id
        self.feed = feed
        self.executor = executor
        self.recorder = recorder
        self.journal = journal
        self.config = config
        self.stop = stop or threading.Event()
        self.intents = intents if executor.protects_on_exchange else None
        self.user_stream = user_stream
        self.market_max_quantity = market_max_quantity or {}  # MARKET_LOT_SIZE maxQty per symbol (live)
        self._halts: list[Halt] = []  # live: the halts in force (PostgreSQL), read at every heartbeat
        self._halted = False  # a max-drawdown halt: the session closed everything and ends
        self._peak_equity: float | None = None  # live: the highest equity seen, kept in the heartbeat
        self._protection_due: dict[str, tuple[float, float]] = {}  # symbol -> (monotonic time of next try, pause)
        self._protection_checked = False  # reconciliation checks the protection once start-up has placed it
        self._user_events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._fired: dict[str, str] = {}  # order id an algo order placed -> stop_loss / take_profit
        self._stream_connections = 0
        self.wallet_balance: float | None = None  # live: the exchange's, from reconciliation and the stream
        self._realised_today = 0.0  # PnL closed since 00:00 UTC, from PostgreSQL at start, then the session's
        self._entry_blocks: dict[str, tuple[dt.datetime, str]] = {}  # symbol -> (until, why)
        self._close_retry: dict[str, tuple[float, float]] = {}  # symbol -> (monotonic time of next try, pause)
        self.positions: dict[str, Position] = {}
        self.equity = config.risk.starting_equity
        self.decisions: list[Decision] = []
        self.closed: list[ClosedTrade] = []
        self._bars: dict[str, deque] = {}
        self._books: dict[str, _Book] = {}
        self._last_close: dict[str, float] = {}
        self._entries = 0
        self._events = 0
        self._bar_count = 0
        self._warm_up_bars = 0
        self._first_time: dt.datetime | None = None
        self._last_time: dt.datetime | None = None
        self._atr: dict[str, float] = {}  # symbol -> the last ATR the strategy saw (stop distance of an adoption)
        self.funding = funding  # simulated sessions: the history funding is charged from
        self._funding_until: dict[str, dt.datetime] = {}  # trade_uid -> funding settled up to then
        self._funding_times = {"charged": 0, "assumed": 0, "unknown": 0}
        self._pending: dict[str, tuple[str, dict[str, Any], float]] = {}  # symbol -> entry due at its next event
        self._entry_slippage: dict[str, float] = {}  # trade_uid -> its entry fill's slippage, USDT
        self._exit_unknown: set[str] = set()  # trades gone from the exchange whose exit fills are not found yet
        self._reconciliation: dict[str, Any] = {}
        self._last_beat = self._last_reconcile = 0.0
        self._gate = ModelGate(config.model, config.book_stale_after) if config.model is not None else None

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> SessionResult:
        started = time.monotonic()
        await self.recorder.start()
        status = "failed"
        try:
            details = {"executor": self.executor.mode, "config": _describe(self.config)}
            await asyncio.to_thread(self.journal.start, details)
            if self.config.resume_open_positions:
                await self._resume()
            if self.config.risk.daily_loss_limit is not None:
                self._realised_today = await asyncio.to_thread(self.journal.realised_today, self.recorder.source)
            if self.executor.protects_on_exchange:
                await self._read_halts()
                await self._check_daily_loss()
                self._peak_equity = await asyncio.to_thread(self.journal.peak_equity)
                await self._recover_pending_entries()
                await self._reconcile()
                await self._restore_protection()
                self._protection_checked = True
            if isinstance(self.feed, WarmUpFeed):
                await self._warm_up(self.feed)
            async with self._following_user_stream():
                status = await self._consume(started)
            if status == "completed" and self.config.flatten_on_end:
                await self._flatten(self.config.flatten_reason)
        except asyncio.CancelledError:
            status = "terminated"
            raise
        finally:
            await self.recorder.flush()
            await self._heartbeat(status)
            await self.recorder.close()  # its last attempt to empty the spool
            metrics = self.recorder.metrics()
            await self.executor.shutdown()
        return SessionResult(
            self.session_id, status, self._events, self._bar_count, self.decisions, self.closed,
            list(self.positions.values()), self.config.risk.starting_equity, self.equity, metrics,
            time.monotonic() - started, self._first_time, self._last_time, self._warm_up_bars, self._reconciliation,
            dict(self._funding_times),
        )

    async def _warm_up(self, feed: WarmUpFeed) -> None:
        """Recent closed bars from the feed's history fill the indicators' warm-up; no trading on them."""
        for bar in await feed.warm_up(self.config.strategy.history_bars(self.config.interval)):
            if self._traded_bar(bar):
                self._remember_bar(bar)
                self._warm_up_bars += 1

    async def _consume(self, started: float) -> str:
        # aclosing: a feed left early (max_events, stop) closes its connections now, not at GC time.
        async with contextlib.aclosing(self.feed.events()) as events:
            self._last_beat = self._last_reconcile = time.monotonic()
            while True:
                if self._halted:
                    return "halted"
                if self.stop.is_set():
                    return "terminated"
                if self.config.max_events is not None and self._events >= self.config.max_events:
                    return "max_events"
                if (self.config.max_duration is not None
                        and time.monotonic() - started >= self.config.max_duration.total_seconds()):
                    return "max_duration"
                event = await self._next_event(events)
                if event is None:
                    return "halted" if self._halted else "terminated" if self.stop.is_set() else "completed"
                await self.on_event(event)
                await self._periodic()

    @contextlib.asynccontextmanager
    async def _following_user_stream(self):
        """Read the user-data stream into a queue while the session runs (handled in `_periodic`)."""
        if self.user_stream is None:
            yield
            return

        async def follow() -> None:
            async with contextlib.aclosing(self.user_stream.events()) as events:
                async for event in events:
                    self._user_events.put_nowait(event)

        task = asyncio.create_task(follow(), name=f"user-stream-{self.session_id}")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _periodic(self) -> None:
        """Between events (also while the feed is quiet): the account's events, the heartbeat, and
        reconciliation when due."""
        while not self._user_events.empty():
            await self._on_user_event(self._user_events.get_nowait())
        if time.monotonic() - self._last_beat >= self.config.heartbeat_seconds:
            await self._heartbeat("running")
            if self.executor.protects_on_exchange:
                await self._read_halts()
            self._last_beat = time.monotonic()
        if (self.executor.protects_on_exchange
                and time.monotonic() - self._last_reconcile >= self.config.reconcile_seconds):
            self._last_reconcile = time.monotonic()
            await self._reconcile()
        if self._protection_due:
            await self._repair_protection()

    async def _heartbeat(self, status: str) -> None:
        """Heartbeat and pending decisions; while PostgreSQL is away they wait for the next beat
        (trading goes on: the recorder keeps the trades durable in its spool meanwhile)."""
        try:
            await asyncio.to_thread(self.journal.heartbeat, self._events, self._summary(), status=status)
        except DBAPIError as error:
            log.warning("session %s: heartbeat not written (%s); %d decisions wait for the next one",
                        self.session_id, type(error.orig).__name__, self.journal.pending)

    async def _next_event(self, events) -> KlineEvent | BookEvent | None:
        """The next event, or None at the end of the feed or once `stop` is set while waiting."""
        pending = asyncio.ensure_future(anext(events))
        while True:
            done, _ = await asyncio.wait({pending}, timeout=0.25)
            if done:
                try:
                    return pending.result()
                except StopAsyncIteration:
                    return None
            await self._periodic()
            if self.stop.is_set():
                pending.cancel()
                await asyncio.wait({pending})  # the feed has stopped before it is closed
                return None

    async def on_event(self, event: KlineEvent | BookEvent) -> None:
        self._events += 1
        if isinstance(event, BookEvent):
            now = event.exchange_time
            await self._on_book(event)
        elif isinstance(event, KlineEvent):
            now = kline_end(event)
            if self._traded_bar(event):
                await self._on_bar(event, now)
        else:
            raise TypeError(f"session {self.session_id}: unexpected feed event {type(event).__name__}")
        self._first_time = self._first_time or now
        self._last_time = now
        await self._check_time_stops(now)
        self._charge_funding(now)

    # -- events ---------------------------------------------------------------------------------

    async def _on_book(self, event: BookEvent) -> None:
        if self._gate is not None:
            self._gate.on_book(event)
        if event.best_bid is None or event.best_ask is None:
            return
        book = _Book(event.best_bid, event.best_ask, event.exchange_time, BookSide(event.ask_prices, event.ask_sizes),
                     BookSide(event.bid_prices, event.bid_sizes))
        self._books[event.symbol] = book
        if event.symbol in self._pending:
            buying = self._pending[event.symbol][1]["side"] == "LONG"
            await self._fill_pending(event.symbol, book.ask if buying else book.bid, event.exchange_time,
                                     book.asks if buying else book.bids)
        position = self.positions.get(event.symbol)
        if position is None:
            return
        exit_price = event.best_bid if position.side == "LONG" else event.best_ask
        if hit := price_exit(position, exit_price, exit_price):
            await self._close(position, hit[0], exit_price, event.exchange_time,
                              book.bids if position.side == "LONG" else book.asks)

    def _traded_bar(self, event: KlineEvent) -> bool:
        return event.closed and (self.config.interval is None or event.interval == self.config.interval)

    def _remember_bar(self, bar: KlineEvent) -> None:
        self._last_close[bar.symbol] = bar.close
        history = self._bars.setdefault(bar.symbol, deque(maxlen=self.config.strategy.history_bars(bar.interval)))
        history.append((bar.open_time, bar.open, bar.high, bar.low, bar.close, bar.volume))

    async def _on_bar(self, bar: KlineEvent, now: dt.datetime) -> None:
        self._bar_count += 1
        if bar.symbol in self._pending:  # the first price after the signal: this bar's open
            await self._fill_pending(bar.symbol, bar.open, bar.open_time, None)
        position = self.positions.get(bar.symbol)
        if position is not None and (hit := price_exit(position, bar.low, bar.high, bar.open)):
            await self._close(position, hit[0], hit[1], now)
        self._remember_bar(bar)
        if self.config.trade_from is None or now > self.config.trade_from:
            await self._consider_entry(bar.symbol, now)

    async def _consider_entry(self, symbol: str, now: dt.datetime) -> None:
        if symbol in self.positions or symbol in self._pending:
            return
        bars = pd.DataFrame(list(self._bars[symbol]), columns=list(BAR_COLUMNS))
        verdict = evaluate(bars, self.config.strategy)
        if verdict.signal is None:
            if verdict.side is not None:  # a trend was there and was turned down: worth keeping
                self._decide(now, symbol, "skip", verdict.reason, bars["close"].iloc[-1], details=verdict.features)
            return
        if _finite(atr := verdict.features.get("atr")):
            self._atr[symbol] = float(atr)
        signal = verdict.signal
        win_probability, reason = None, verdict.reason
        if self._gate is not None:  # the model's probability of this side replaces the rules' confidence
            judged = self._gate.judge(symbol, signal.side, now)
            verdict.features.update(judged.features)
            if not judged.passed:
                self._decide(now, symbol, "skip", judged.reason, signal.price, details=verdict.features)
                return
            win_probability, reason = judged.probability, f"{reason}; {judged.reason}"
        if refusal := can_open(symbol, self.positions, self.config.risk) or self._entry_blocked(symbol, now):
            self._decide(now, symbol, "skip", refusal, signal.price, details=verdict.features)
            return
        if refusal := self._account_refusal():
            self._decide(now, symbol, "skip", refusal, signal.price, details=verdict.features)
            return
        reference = self._reference_price(symbol, signal.side, now, opening=True)
        stop_loss, take_profit = stop_levels(signal.side, reference, signal.atr, self.config.risk)
        quantity = position_size(self._sizing_equity(), reference, stop_loss, self.config.risk)
        quantity = capped_quantity(quantity, reference, self.positions, self.config.risk)
        quantity = min(quantity, self.market_max_quantity.get(symbol, math.inf))  # one MARKET order's maximum
        if quantity <= 0:
            self._decide(now, symbol, "skip", "position below the minimum notional (or beyond the notional caps)",
                         reference, details=verdict.features)
            return
        self._entries += 1
        trade_uid = f"{self.session_id}-{symbol}-{self._entries:04d}"
        client_id = client_order_id(trade_uid, "entry")
        entry = {"symbol": symbol, "side": signal.side, "stop_loss": stop_loss, "take_profit": take_profit,
                 "reference": reference, "confidence": signal.confidence if win_probability is None else win_probability,
                 "win_probability": win_probability, "reason": reason, "features": verdict.features,
                 "client_id": client_id}
        if not self.executor.protects_on_exchange:  # simulated: it fills at the symbol's next event
            self._pending[symbol] = (trade_uid, entry, quantity)
            return
        if self.intents is not None and not await self._write_ahead(now, trade_uid, entry, quantity, reference):
            return
        try:
            fill = await self.executor.open(symbol, signal.side, quantity, reference, now, client_id)
        except OrderRejected as rejected:
            self._rejected(now, symbol, "entry", rejected, reference, trade_uid)
            if not rejected.uncertain:  # else the next start looks it up
                await self._settle(trade_uid, "rejected")
            return
        await self._opened(trade_uid, entry, fill)

    async def _write_ahead(self, now: dt.datetime, trade_uid: str, entry: dict[str, Any], quantity: float,
                           reference: float) -> bool:
        """Commit the entry's intent; without it no order is sent (a crash would leave it unknown)."""
        try:
            await asyncio.to_thread(self.intents.add, trade_uid, entry, quantity)
        except DBAPIError as error:
            self._decide(now, entry["symbol"], "skip", f"entry not sent: its intent could not be written "
                         f"({type(error.orig).__name__})", reference, trade_uid)
            return False
        return True

    async def _settle(self, trade_uid: str, status: str) -> None:
        """Settle an intent; when PostgreSQL is away it stays unsettled and the next start settles it."""
        if self.intents is None:
            return
        try:
            await asyncio.to_thread(self.intents.settle, trade_uid, status)
        except DBAPIError as error:
            log.warning("session %s: intent %s not settled as %s (%s)", self.session_id, trade_uid, status,
                        type(error.orig).__name__)

    def _sizing_equity(self) -> float:
        """Live: the exchange's wallet balance; paper and backtest: the session's own equity."""
        if self.executor.protects_on_exchange and self.wallet_balance is not None:
            return self.wallet_balance
        return self.equity

    def _account_refusal(self) -> str | None:
        if why := daily_loss_reached(self._realised_today, self.config.risk):
            return why
        if self._halts:
            return "trading halted: " + "; ".join(halt.describe() for halt in self._halts)
        if self.executor.protects_on_exchange and self.wallet_balance is None:
            return "wallet balance unknown (no reconciliation yet): no entry sized from a made-up account"
        return None

    def _entry_blocked(self, symbol: str, now: dt.datetime) -> str | None:
        until, why = self._entry_blocks.get(symbol, (None, None))
        return why if until is not None and now < until else None

    def _rejected(self, now: dt.datetime, symbol: str, what: str, rejected: OrderRejected, price: float | None,
                  trade_uid: str | None) -> None:
        """A refused order is a decision with Binance's code and message; only its symbol waits."""
        log.warning("session %s: %s order refused: %s", self.session_id, what, rejected)
        if what == "entry":
            until = now + self.config.reject_cooldown
            self._entry_blocks[symbol] = (until, f"an order on {symbol} was refused; no entry before {until.isoformat()}")
        self._decide(now, symbol, "reject", f"{what} order refused: {rejected.message}", price, trade_uid,
                     {"order": what, "code": rejected.code})

    async def _check_time_stops(self, now: dt.datetime) -> None:
        for position in list(self.positions.values()):
            if time_stop_due(position.entry_time, now, self.config.risk):
                price = self._reference_price(position.symbol, position.side, now, opening=False)
                await self._close(position, "time_stop", price, now,
                                  self._book_side(position.symbol, now, buying=position.side == "SHORT"))

    def _book_side(self, symbol: str, now: dt.datetime, *, buying: bool) -> BookSide | None:
        """The levels a market order would take now, when the symbol's book is fresh."""
        book = self._books.get(symbol)
        if book is None or now - book.time > self.config.book_stale_after:
            return None
        return book.asks if buying else book.bids

    async def _fill_pending(self, symbol: str, reference: float, time: dt.datetime, book: BookSide | None) -> None:
        """A simulated entry fills at the first event of its symbol after the signal."""
        trade_uid, entry, quantity = self._pending.pop(symbol)
        try:
            fill = await self.executor.open(symbol, entry["side"], quantity, reference, time, entry["client_id"],
                                            book=book)
        except OrderRejected as rejected:
            self._rejected(time, symbol, "entry", rejected, reference, trade_uid)
            return
        await self._opened(trade_uid, entry, fill)

    def _charge_funding(self, now: dt.datetime) -> None:
        """Simulated positions pay or receive funding at each funding time they are held across."""
        if self.funding is None:
            return
        for position in self.positions.values():
            after = self._funding_until.get(position.trade_uid, position.entry_time)
            if now > after:
                for event in self.funding.events(position.symbol, after, now):
                    self._settle_funding(position, event)
                self._funding_until[position.trade_uid] = now

    def _settle_funding(self, position: Position, event: FundingEvent) -> None:
        rate, kind = event.rate, "charged"
        if rate is None:
            rate, kind = self.funding.assumed_rate, "assumed"
        self._funding_times[kind if rate is not None else "unknown"] += 1
        if rate is None:
            self._decide(event.time, position.symbol, "funding", "funding rate unknown: not charged", None,
                         position.trade_uid, {"funding_time": event.time.isoformat()})
            return
        mark = event.mark_price or self._last_close.get(position.symbol, position.entry_price)
        amount = funding_payment(1 if position.side == "LONG" else -1, position.quantity, mark, rate)
        position.funding += amount
        self._decide(event.time, position.symbol, "funding", f"funding {rate:+.4%} ({kind}) at mark {mark:g}: "
                     f"{amount:+.4f} USDT", mark, position.trade_uid, {"rate": rate, "amount": amount, "kind": kind})

    # -- positions ------------------------------------------------------------------------------

    def _reference_price(self, symbol: str, side: str, now: dt.datetime, *, opening: bool) -> float:
        """Best ask to buy, best bid to sell when the book is fresh; else the last close."""
        book = self._books.get(symbol)
        if book is not None and now - book.time <= self.config.book_stale_after:
            buying = (side == "LONG") == opening
            return book.ask if buying else book.bid
        if symbol in self._last_close:
            return self._last_close[symbol]
        if book is not None:
            return (book.bid + book.ask) / 2
        raise RuntimeError(f"session {self.session_id}: no price known for {symbol}")

    async def _opened(self, trade_uid: str, entry: dict[str, Any], fill: Fill) -> None:
        symbol, side = entry["symbol"], entry["side"]
        stop_loss, take_profit = entry["stop_loss"], entry["take_profit"]
        # The stops sit around the real fill (the same distances from it as from the reference price).
        stop_loss += fill.price - entry["reference"]
        take_profit += fill.price - entry["reference"]
        self._entry_slippage[trade_uid] = fill.slippage
        position = Position(trade_uid, symbol, side, fill.quantity, fill.price, fill.time, stop_loss, take_profit,
                            fill.fees)
        self.positions[symbol] = position
        leverage = fill.price * fill.quantity / self.equity
        await self.recorder.record_entry(TradeOpened(
            trade_uid=trade_uid, symbol=symbol, side=side, entry_time=fill.time, entry_price=fill.price,
            quantity=fill.quantity, leverage=round(leverage, 6), stop_loss=stop_loss, take_profit=take_profit,
            strategy=STRATEGY_NAME, confidence=entry["confidence"], win_probability=entry.get("win_probability"),
            features=entry["features"],
            is_virtual=self.executor.mode != "live",
        ))
        self._decide(fill.time, symbol, "enter", entry["reason"], fill.price, trade_uid,
                     {"side": side, "quantity": fill.quantity, "stop_loss": stop_loss, "take_profit": take_profit})
        await self._protect(position, fill.time)
        await self._settle(trade_uid, "filled")
        if self.executor.protects_on_exchange:  # the real fee, now the position is protected
            position.entry_fees = (await self.executor.real_fill(symbol, fill)).fees

    async def _protect(self, position: Position, now: dt.datetime, *, renew: bool = False) -> None:
        """Stop loss and take profit on the exchange (`renew`: what it lacks, under new ids); a position that
        cannot be protected is closed."""
        try:
            await (self.executor.renew_protection(position) if renew else self.executor.protect(position))
        except OrderRejected as rejected:
            self._rejected(now, position.symbol, "protection", rejected, position.entry_price, position.trade_uid)
            # Already beyond a level (-2021): that exit is due now. Otherwise it would stay unprotected.
            reason = "unprotected"
            if rejected.code == WOULD_TRIGGER_NOW:
                reason = "take_profit" if rejected.message.startswith("take_profit") else "stop_loss"
            await self._close(position, reason, self._exit_estimate(position, now), now)

    def _exit_estimate(self, position: Position, now: dt.datetime) -> float:
        """The reference price of a close; the entry price before any price is known (at start: a
        reduce-only close needs no price, only an estimate for the logs and the filters)."""
        try:
            return self._reference_price(position.symbol, position.side, now, opening=False)
        except RuntimeError:
            return position.entry_price

    async def _close(self, position: Position, reason: str, reference: float, now: dt.datetime,
                     book: BookSide | None = None) -> None:
        retry = self._close_retry.get(position.symbol)
        if retry is not None and time.monotonic() < retry[0]:
            return  # the last attempt failed: wait for the back-off
        try:
            fill = await self.executor.close(position, reference, now, book=book)
        except OrderRejected as rejected:
            pause = min(retry[1] * 2, self.config.close_retry_seconds[1]) if retry else self.config.close_retry_seconds[0]
            self._close_retry[position.symbol] = (time.monotonic() + pause, pause)
            self._rejected(now, position.symbol, "close", rejected, reference, position.trade_uid)
            return
        self._close_retry.pop(position.symbol, None)
        await self._finish(position, fill, fill.reason or reason)  # the exchange may have closed it first

    async def _finish(self, position: Position, fill: Fill, reason: str) -> None:
        """Record the close of `position` by `fill` (Binance's realised PnL when it gave one), funding included."""
        fees = position.entry_fees + fill.fees
        gross = fill.realized_pnl if fill.realized_pnl is not None else gross_pnl(position, fill.price)
        pnl = gross - fees + position.funding
        pnl_pct = pnl / (position.entry_price * position.quantity)
        del self.positions[position.symbol]
        self._exit_unknown.discard(position.trade_uid)
        self.equity += pnl
        self._realised_today += pnl
        status = TradeStatus.LIQUIDATED if fill.liquidated else TradeStatus.CLOSED
        await self.recorder.record_exit(TradeClosed(
            trade_uid=position.trade_uid, symbol=position.symbol, exit_time=fill.time, exit_price=fill.price,
            pnl=pnl, pnl_pct=pnl_pct, fees=fees, exit_reason=reason, status=status.value,
        ))
        await self._settle(position.trade_uid, "closed")
        self._funding_until.pop(position.trade_uid, None)
        slippage = self._entry_slippage.pop(position.trade_uid, 0.0) + fill.slippage
        self.closed.append(ClosedTrade(position.trade_uid, position.symbol, position.side, position.entry_time,
                                       fill.time, position.entry_price, fill.price, position.quantity, pnl, pnl_pct,
                                       fees, reason, position.funding, slippage))
        self._decide(fill.time, position.symbol, "exit", reason, fill.price, position.trade_uid,
                     {"side": position.side, "pnl": pnl, "pnl_pct": pnl_pct})
        await self._check_daily_loss()

    async def _flatten(self, reason: str) -> None:
        for position in list(self.positions.values()):
            when = self._last_time or dt.datetime.now(dt.UTC)
            await self._close(position, reason, self._exit_estimate(position, when), when)
        if self.executor.protects_on_exchange and self.positions:  # a failed close had cancelled its protection
            for position in self.positions.values():
                self._protection_lost(position, "its close failed", dt.datetime.now(dt.UTC))
            await self._repair_protection()

    async def _resume(self) -> None:
        for position in await asyncio.to_thread(self.journal.open_positions, self.recorder.source):
            self.positions[position.symbol] = position
            await self._resume_entry_fees(position)
            self._decide(position.entry_time, position.symbol, "resume", "open position left by an earlier session",
                         position.entry_price, position.trade_uid, {"side": position.side})

    async def _resume_entry_fees(self, position: Position) -> None:
        """A resumed live position's entry fee, from its entry order's trades (0 when not ours)."""
        if not self.executor.protects_on_exchange:
            return
        try:
            fill = await self.executor.find_entry(position.symbol, client_order_id(position.trade_uid, "entry"))
        except OrderRejected as rejected:
            log.warning("session %s: entry fee of %s unknown: %s", self.session_id, position.trade_uid, rejected)
            return
        position.entry_fees = fill.fees if fill is not None else 0.0

    async def _recover_pending_entries(self) -> None:
        """Entries sent by an earlier session whose recording may have been lost (a crash between the
        order and the recorder): those that filled are recorded now, the others settled."""
        intents = await asyncio.to_thread(self.intents.unsettled) if self.intents is not None else {}
        statuses = await asyncio.to_thread(self.journal.trade_statuses, list(intents))
        resumed = {p.trade_uid for p in self.positions.values()}
        for trade_uid, entry in intents.items():
            if trade_uid in resumed:
                if entry["status"] == "pending":
                    await self._settle(trade_uid, "filled")
                continue
            if trade_uid in statuses:  # recorded, and no longer open: nothing to recover
                await self._settle(trade_uid, "closed")
                continue
            now = dt.datetime.now(dt.UTC)
            try:
                fill = await self.executor.find_entry(entry["symbol"], entry["client_id"])
            except OrderRejected as rejected:
                self._rejected(now, entry["symbol"], "recovery lookup", rejected, None, trade_uid)
                continue
            if fill is None or entry["symbol"] in self.positions:
                await self._settle(trade_uid, "unfilled" if fill is None else "closed")
                continue
            self._decide(now, entry["symbol"], "recover", "entry filled while no session recorded it",
                         fill.price, trade_uid, {"client_id": entry["client_id"]})
            await self._opened(trade_uid, entry, fill)

    # -- the exchange as the source of truth ---------------------------------------------------------

    async def _reconcile(self) -> None:
        """Compare the session with the exchange: close what the exchange no longer holds (with its real
        exit), adopt what no trade explains, note quantities that differ; keep the balance."""
        now = dt.datetime.now(dt.UTC)
        try:
            state = await self.executor.account_state()
        except OrderRejected as rejected:
            self._rejected(now, rejected.symbol, "reconciliation", rejected, None, None)
            return
        if state is None:
            return
        changes: list[str] = []
        protected = {stem_of(order.get("clientAlgoId")) for order in state.open_algo_orders}
        for position in list(self.positions.values()):
            held = state.positions.get(position.symbol)
            if held is None or held.side != position.side:
                changes += await self._closed_on_exchange(position, now)
                continue
            if self._protection_checked and (missing := _missing_protection(position, protected)):
                changes.append(f"{position.symbol}: {', '.join(missing)} missing on the exchange")
                self._protection_lost(position, f"{' and '.join(missing)} not on the exchange", now)
            elif abs(abs(held.amount) - position.quantity) > 1e-9:
                changes.append(f"{position.symbol}: the exchange holds {abs(held.amount):g}, the trade {position.quantity:g}")
                self._decide(now, position.symbol, "reconcile", changes[-1], held.entry_price, position.trade_uid,
                             {"exchange_amount": held.amount, "trade_quantity": position.quantity})
        adopting = [held for symbol, held in state.positions.items() if symbol not in self.positions]
        for adopted in await asyncio.gather(*(self._adopt(held, now) for held in adopting)):
            changes += adopted  # protected concurrently: the executor bounds the orders in flight
        self.wallet_balance = state.wallet_balance
        self._reconciliation = _describe_state(state, now, changes)
        await self._check_drawdown(state, now)

    async def _closed_on_exchange(self, position: Position, now: dt.datetime) -> list[str]:
        """`position` is gone from the exchange: record its real exit, or say it is not found yet."""
        try:
            fill = await self.executor.exit_on_exchange(position)
        except OrderRejected as rejected:
            self._rejected(now, position.symbol, "reconciliation", rejected, None, position.trade_uid)
            return []
        if fill is None:
            if position.trade_uid not in self._exit_unknown:  # said once, looked for every minute
                self._exit_unknown.add(position.trade_uid)
                self._decide(now, position.symbol, "reconcile", "closed on the exchange; its exit fills are not "
                             "found yet", None, position.trade_uid)
            return [f"{position.symbol}: closed on the exchange, exit not found yet"]
        await self.executor.cancel_protection(position)  # the other of its stop and take profit
        self._decide(now, position.symbol, "reconcile", f"closed on the exchange ({fill.reason})", fill.price,
                     position.trade_uid, {"quantity": fill.quantity, "fees": fill.fees,
                                          "realized_pnl": fill.realized_pnl, "order_id": fill.order_id})
        await self._finish(position, fill, fill.reason or "manual")
        return [f"{position.symbol}: closed on the exchange ({fill.reason}) at {fill.price:g}"]

    # -- the user-data stream ---------------------------------------------------------------------

    async def _on_user_event(self, event: dict[str, Any]) -> None:
        kind = event.get("e")
        if kind == CONNECTED:
            self._stream_connections += 1
            if self._stream_connections > 1:  # events may have been missed while it was away
                self._last_reconcile = 0.0
        elif kind == "ORDER_TRADE_UPDATE":
            await self._on_order_update(event["o"])
        elif kind == "ALGO_UPDATE":
            self._on_algo_update(event["o"], from_epoch_ms(int(event["E"])))
        elif kind == "ACCOUNT_UPDATE":
            self._on_account_update(event["a"], from_epoch_ms(int(event["E"])))

    async def _on_order_update(self, order: dict[str, Any]) -> None:
        """A fill the session did not send (its own entries and closes are followed over REST) that reduces
        one of its positions: a partial exit, or the close."""
        client_id = order.get("c") or ""
        position = self.positions.get(order["s"])
        filled = order.get("x") in ("TRADE", "CALCULATED") and float(order.get("l") or 0) > 0
        if not filled or is_ours(client_id) or position is None:
            return
        if order["S"] != ("SELL" if position.side == "LONG" else "BUY"):
            return  # added to by someone else: the next reconciliation notes the quantity
        order_id = str(order["i"])
        liquidated = order.get("o") == "LIQUIDATION" or client_id.startswith("autoclose-")
        reason = "liquidation" if liquidated else "adl" if client_id.startswith("adl_autoclose") else None
        fill = Fill(float(order["L"]), float(order["l"]), float(order.get("n") or 0), from_epoch_ms(int(order["T"])),
                    order_id, reason, float(order.get("rp") or 0), liquidated)
        if position.quantity - fill.quantity > 1e-9:
            await self._partial_exit(position, fill, str(order.get("t")))
            return
        reason = reason or self._fired.get(order_id)
        if reason is None:  # the algo update may come later, or it was done by hand: ask the exchange
            reason, _ = await self.executor.exit_reason(position, {order_id})
        try:
            await self.executor.cancel_protection(position)  # what is left of its stop and take profit
        except OrderRejected as rejected:
            self._rejected(fill.time, position.symbol, "protection", rejected, None, position.trade_uid)
        await self._finish(position, fill, reason)

    async def _partial_exit(self, position: Position, fill: Fill, trade_id: str) -> None:
        reason = fill.reason or self._fired.get(fill.order_id) or "manual"
        pnl = fill.realized_pnl - fill.fees
        position.quantity = round(position.quantity - fill.quantity, 12)
        self.equity += pnl
        await self.recorder.record_partial_exit(TradePartiallyClosed(
            exit_uid=f"{position.trade_uid}:{fill.order_id}:{trade_id}", trade_uid=position.trade_uid,
            symbol=position.symbol, exit_time=fill.time, exit_price=fill.price, quantity=fill.quantity, pnl=pnl,
            pnl_pct=pnl / (position.entry_price * fill.quantity), fees=fill.fees, reason=reason,
        ))
        self._decide(fill.time, position.symbol, "partial_exit", reason, fill.price, position.trade_uid,
                     {"quantity": fill.quantity, "left": position.quantity, "pnl": pnl, "fees": fill.fees})

    def _on_algo_update(self, order: dict[str, Any], now: dt.datetime) -> None:
        """Which order our stop loss or take profit placed (for the fill's reason), and what became of it."""
        client_id = order.get("caid") or ""
        role = PROTECTION_ROLES.get(client_id[:4]) if is_ours(client_id) else None
        if role is None:
            return
        if order.get("ai"):
            self._fired[str(order["ai"])] = role
        status = order.get("X")
        if status in ("TRIGGERED", "FINISHED", "EXPIRED", "REJECTED"):
            position = self.positions.get(order["s"])
            mine = position is not None and belongs_to(client_id, position.trade_uid, role)
            self._decide(now, order["s"], "protect", f"{role} {status.lower()}", float(order.get("tp") or 0) or None,
                         position.trade_uid if mine else None, {"algo_id": order.get("aid"), "order_id": order.get("ai")})
            if mine and status in ("EXPIRED", "REJECTED"):  # the position is open and lost that protection
                self._protection_lost(position, f"{role} {status.lower()}", now)

    def _on_account_update(self, update: dict[str, Any], now: dt.datetime) -> None:
        """The wallet balance; a funding fee is recorded on the position it was charged to."""
        usdt = [balance for balance in update.get("B", []) if balance.get("a") == "USDT"]
        if usdt:
            self.wallet_balance = float(usdt[0]["wb"])
        if update.get("m") != "FUNDING_FEE" or not usdt:
            return
        amount = float(usdt[0].get("bc") or 0)
        # Isolated: the position comes with it; cross: only the balance (then it is ours if we hold one).
        symbols = [p["s"] for p in update.get("P", [])] or (list(self.positions) if len(self.positions) == 1 else [])
        position = self.positions.get(symbols[0]) if len(symbols) == 1 else None
        if position is not None:
            position.funding += amount
        self._decide(now, symbols[0] if len(symbols) == 1 else "*", "funding", f"funding fee {amount:+.8f} USDT",
                     None, position.trade_uid if position else None,
                     {"amount": amount, "wallet_balance": self.wallet_balance})

    async def _adopt(self, held: ExchangePosition, now: dt.datetime) -> list[str]:
        """A position no trade explains becomes an OPEN trade of ours, at the exchange's entry, protected."""
        symbol, side, quantity = held.symbol, held.side, abs(held.amount)
        stop_loss, take_profit = stop_levels(side, held.entry_price, self._atr.get(symbol, 0.0), self.config.risk)
        self._entries += 1
        trade_uid = f"{self.session_id}-{symbol}-{self._entries:04d}-adopted"
        entry_time = held.update_time or now
        position = Position(trade_uid, symbol, side, quantity, held.entry_price, entry_time, stop_loss, take_profit)
        self.positions[symbol] = position
        await self.recorder.record_entry(TradeOpened(
            trade_uid=trade_uid, symbol=symbol, side=side, entry_time=entry_time, entry_price=held.entry_price,
            quantity=quantity, stop_loss=stop_loss, take_profit=take_profit, strategy=ADOPTED_STRATEGY,
            features={"adopted_at": now.isoformat(), "position_amount": held.amount}, is_virtual=False,
        ))
        self._decide(now, symbol, "adopt", "a position on the exchange no trade explained", held.entry_price,
                     trade_uid, {"side": side, "quantity": quantity, "stop_loss": stop_loss,
                                 "take_profit": take_profit})
        await self._protect(position, now)
        return [f"{symbol}: adopted {side} {quantity:g} at {held.entry_price:g}"]

    async def _restore_protection(self) -> None:
        """The exchange holds exactly the stop loss and take profit of every open position."""
        now = dt.datetime.now(dt.UTC)
        try:
            cancelled, lacking = await self.executor.tidy_protection(list(self.positions.values()))
        except OrderRejected as rejected:  # not known what is there: place everything (kept if there)
            self._rejected(now, rejected.symbol, "protection", rejected, None, None)
            cancelled, lacking = [], list(self.positions.values())
        for change in cancelled:
            self._decide(now, change.split(":")[0], "protect", change)
        for position in lacking:
            self._decide(now, position.symbol, "protect", "placing the missing protection", None, position.trade_uid)
        await asyncio.gather(*(self._protect(position, now, renew=True) for position in lacking))

    # -- protection that stays, halts -------------------------------------------------------------

    def _protection_lost(self, position: Position, why: str, now: dt.datetime) -> None:
        """Place the position's protection again at the next pass (then with back-off while it fails)."""
        if position.symbol in self._protection_due:
            return
        self._protection_due[position.symbol] = (0.0, self.config.protection_retry_seconds[0])
        self._decide(now, position.symbol, "protect", f"protection lost ({why}): placing it again", None,
                     position.trade_uid)

    async def _repair_protection(self) -> None:
        for symbol, (due, pause) in list(self._protection_due.items()):
            position = self.positions.get(symbol)
            if position is None:  # closed meanwhile: nothing to protect
                del self._protection_due[symbol]
                continue
            if time.monotonic() < due:
                continue
            now = dt.datetime.now(dt.UTC)
            try:
                await self.executor.renew_protection(position)  # a new id per attempt
            except OrderRejected as rejected:
                self._rejected(now, symbol, "protection", rejected, None, position.trade_uid)
                if rejected.code == WOULD_TRIGGER_NOW:  # beyond a level already: that exit is due now
                    del self._protection_due[symbol]
                    reason = "take_profit" if rejected.message.startswith("take_profit") else "stop_loss"
                    await self._close(position, reason, self._exit_estimate(position, now), now)
                    continue
                self._protection_due[symbol] = (time.monotonic() + pause,
                                                min(pause * 2, self.config.protection_retry_seconds[1]))
                continue
            del self._protection_due[symbol]
            self._decide(now, symbol, "protect", "protection placed again", None, position.trade_uid,
                         {"stop_loss": position.stop_loss, "take_profit": position.take_profit})

    async def _read_halts(self) -> None:
        """The halts in force; while PostgreSQL is away the last ones read stay in force."""
        try:
            self._halts = await asyncio.to_thread(self.journal.halts_in_force)
        except DBAPIError as error:
            log.warning("session %s: halts not read (%s); keeping the last known", self.session_id,
                        type(error.orig).__name__)

    async def _halt(self, reason: str, why: str, *, until: dt.datetime | None, details: dict[str, Any]) -> None:
        """Record a halt (no entry while it is in force, across restarts) unless one of `reason` is in force."""
        if any(halt.reason == reason for halt in self._halts):
            return
        now = dt.datetime.now(dt.UTC)
        try:
            halt = await asyncio.to_thread(self.journal.halt, reason, until, {"why": why, **details})
        except DBAPIError as error:  # still in force for this session; the next one finds the limit again
            log.warning("session %s: halt %s not recorded (%s)", self.session_id, reason, type(error.orig).__name__)
            halt = Halt(0, reason, now, until, details)
        self._halts.append(halt)
        self._decide(now, "*", "halt", why, None, None, {"reason": reason, "until": until.isoformat() if until
                                                           else None, **details})

    async def _check_daily_loss(self) -> None:
        """Live: once today's closed trades lost the daily limit, a halt until 00:00 UTC (visible, and kept)."""
        if self.executor.protects_on_exchange and (why := daily_loss_reached(self._realised_today, self.config.risk)):
            await self._halt(DAILY_LOSS_LIMIT, why, until=next_utc_midnight(dt.datetime.now(dt.UTC)),
                             details={"realised_today": self._realised_today})

    async def _check_drawdown(self, state: AccountState, now: dt.datetime) -> None:
        """Equity (wallet + unrealised PnL) against its peak: beyond `max_drawdown`, close everything and end."""
        equity = state.wallet_balance + sum((p.mark_price - p.entry_price) * p.amount for p in state.positions.values())
        self._peak_equity = max(self._peak_equity or equity, equity)
        why = drawdown_reached(self._peak_equity, equity, self.config.risk)
        if why is None or self._halted:
            return
        await self._halt(MAX_DRAWDOWN, why, until=None, details={"equity": equity, "peak_equity": self._peak_equity})
        self._halted = True
        self.stop.set()
        await self._flatten(MAX_DRAWDOWN)

    def _decide(self, ts: dt.datetime, symbol: str, action: str, reason: str, price: float | None = None,
                trade_uid: str | None = None, details: dict[str, Any] | None = None) -> None:
        decision = Decision(ts, symbol, action, reason, None if price is None else float(price), trade_uid,
                            details or {})
        self.decisions.append(decision)
        self.journal.add(decision)

    def _summary(self) -> dict[str, Any]:
        return {
            "events": self._events, "bars": self._bar_count, "warm_up_bars": self._warm_up_bars, "equity": self.equity,
            "open_positions": sorted(self.positions), "closed_trades": len(self.closed),
            "fees": sum(t.fees for t in self.closed), "funding": sum(t.funding for t in self.closed),
            "slippage": sum(t.slippage for t in self.closed), "funding_times": dict(self._funding_times),
            "last_event_time": self._last_time.isoformat() if self._last_time else None,
            "reconciliation": self._reconciliation or None,
            "peak_equity": self._peak_equity,
            "halts": [halt.describe() for halt in self._halts],
        }


def _missing_protection(position: Position, open_stems: set[str | None]) -> list[str]:
    """The roles of `position` none of whose ids (any attempt) is among the open algo orders' `stem_of`."""
    return [role for role in ("stop_loss", "take_profit")
            if stem_of(client_order_id(position.trade_uid, role)) not in open_stems]


def _describe_state(state: AccountState, now: dt.datetime, changes: list[str]) -> dict[str, Any]:
    """A reconciliation as JSON-ready values (no ids of the account beyond symbols): each position with
    its unrealised PnL and the conditional orders protecting it on the exchange."""
    details = {}
    for symbol, held in sorted(state.positions.items()):
        protection = [{"type": o.get("orderType"), "trigger_price": float(o.get("triggerPrice") or 0),
                       "ours": is_ours(o.get("clientAlgoId"))}
                      for o in state.open_algo_orders if o.get("symbol") == symbol]
        protection.sort(key=lambda order: str(order["type"]))  # placed together: the exchange's order varies
        details[symbol] = {"amount": held.amount, "entry_price": held.entry_price, "mark_price": held.mark_price,
                           "unrealised_pnl": (held.mark_price - held.entry_price) * held.amount,
                           "protection": protection}
    return {"at": now.isoformat(), "positions": {s: p.amount for s, p in sorted(state.positions.items())},
            "position_details": details,
            "wallet_balance": state.wallet_balance, "available_balance": state.available_balance,
            "open_orders": len(state.open_orders), "open_algo_orders": len(state.open_algo_orders),
            "changes": changes}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _describe(config: SessionConfig) -> dict[str, Any]:
    """The config as JSON-ready values (for the session's row); the model by its version, not its trees."""
    described = asdict(replace(config, model=None))
    described["model"] = config.model.describe() if config.model is not None else None
    return _json_ready(described)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value
