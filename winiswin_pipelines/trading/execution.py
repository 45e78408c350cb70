"""Order execution: paper fills by default; live Binance orders only with keys AND an explicit opt-in.

`PaperExecutor` goes through the same exchange filters as live (`SymbolFilters`: quantities rounded
down to the step size, the minimum and MARKET maximum quantity, the minimum notional except on
reduce-only closes, prices on the tick grid), from the exchange's `exchangeInfo` or, offline,
`PAPER_EXCHANGE_INFO`. It fills a market order by walking the book's levels when the session hands
it a fresh book (what the levels shown cannot fill goes at the last level moved by `slippage_bps`),
otherwise at the reference price (the last close) moved against the trade by `slippage_bps`; the
fill's `slippage` is its cost against the reference price, in USDT. It charges the taker fee
(Binance's regular tier, 0.05%, unless configured): deterministic, so a replay gives the same trades.

`LiveExecutor` sends signed MARKET orders through `BinanceRestClient`, with quantities rounded down
to the symbol's step size and checked against its minimum quantity and minimum notional
(`exchangeInfo` filters; Binance exempts reduce-only orders from the minimum notional, and so do
we). Every order carries a client id derived from its trade (`orders.client_order_id`): when the
outcome of a request is unknown (no reply, a dropped connection, a 5xx), the order is looked up by
that id before it is sent again. An order counts as filled only when Binance says so: a NEW reply
is followed by queries until the order is final (cancelled after `fill_timeout`), and the fill is
its `executedQty` at its `avgPrice`.

Right after an entry fills, `protect` places the position's stop loss and take profit on the
exchange as conditional orders of the Algo Order API (`POST /fapi/v1/algoOrder`, STOP_MARKET /
TAKE_PROFIT_MARKET, `closePosition=true`, `workingType=MARK_PRICE`), so the position stays
protected while no session runs. `close` cancels them first (`DELETE /fapi/v1/algoOrder`); when
Binance has nothing left to reduce, the exit is the fill of whichever order closed the position
(the session's own earlier close, or a stop or take profit that fired). `tidy_protection`
(session start) keeps the protective orders that are right and cancels ours that protect nothing
(`GET /fapi/v1/openAlgoOrders`), then the session places what is missing; orders without our
prefix are left alone. A stop or take profit placed again (`renew_protection`: it expired, was
rejected or went missing) goes under a new `clientAlgoId` per attempt (Binance wants it unique among
open orders; a new one keeps lookups by id unambiguous), and every attempt's id counts as the trade's.
A close above `MARKET_LOT_SIZE` goes as several reduce-only MARKET orders (`close_parts`), part n under
the trade's exit id number n; a close the filters refuse is refused before its protection is cancelled.

`account_state` is what reconciliation reads (positions, balance, open orders and algo orders:
`/fapi/v3/positionRisk`, `/fapi/v3/balance`, `/fapi/v1/openOrders`, `/fapi/v1/openAlgoOrders`), and
`exit_on_exchange` the real exit of a position the exchange closed: its closing fills from
`/fapi/v1/userTrades` (quantity-weighted price, commission, realised PnL) and why it closed: the
order of its stop loss or take profit (the algo order's `actualOrderId`), a liquidation
(`/fapi/v1/forceOrders`), the session's own close, or else by hand ("manual").

Before the first entry on a symbol, its margin type (ISOLATED by default; -4046 "no need to
change" is success) and leverage are set (`/fapi/v1/marginType`, `/fapi/v1/leverage`), and the
account's commission on it is read (`/fapi/v1/commissionRate`): the fee of a fill is estimated at the
account's taker rate until the real commission is known.

`LiveExecutor` exists only through `live_executor(...)`, which refuses to build it unless both API
keys are set and live trading was explicitly enabled (`WINISWIN_LIVE_TRADING=1`), and refuses an
account in hedge mode (`dualSidePosition`) or multi-assets mode before any order: the session
trades one-way positions margined in USDT. Keys are never
put in messages. A refused order raises `OrderRejected` with Binance's code and message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time as clock
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any, Protocol, TypeVar

from winiswin_pipelines.marketdata.binance import BinanceAPIError, BinanceRestClient
from winiswin_pipelines.times import from_epoch_ms
from winiswin_pipelines.trading.orders import belongs_to, client_order_id, id_number, is_ours
from winiswin_pipelines.trading.risk import Position, direction

log = logging.getLogger(__name__)
T = TypeVar("T")

LIVE_OPT_IN_VAR = "WINISWIN_LIVE_TRADING"
API_KEY_VAR = "BINANCE_API_KEY"
API_SECRET_VAR = "BINANCE_API_SECRET"
TAKER_FEE_RATE = 0.0005  # Binance USDT-M regular tier (VIP 0): taker 0.05%
MAKER_FEE_RATE = 0.0002  # and maker 0.02%
REDUCE_ONLY_REJECTED = -2022  # nothing left to reduce
WOULD_TRIGGER_NOW = -2021  # a conditional order already on the wrong side of the mark price
DUPLICATED_CLIENT_ID = -4116
NO_NEED_TO_CHANGE_MARGIN_TYPE = -4046
PROTECTION = (("stop_loss", "STOP_MARKET"), ("take_profit", "TAKE_PROFIT_MARKET"))
CONCURRENT_REQUESTS = 16  # requests in flight at once (start-up: 200 positions' protection); the weight window paces them
_OPEN = ("NEW", "PARTIALLY_FILLED")


class LiveTradingRefused(RuntimeError):
    """Live execution was asked for without both API keys and the explicit opt-in."""


class AccountRefused(LiveTradingRefused):
    """The account is set up in a way the session does not trade on (hedge mode, multi-assets mode)."""


class OrderRejected(RuntimeError):
    """An order that was not executed: refused before sending, or by Binance (its code and message), or
    whose outcome could not be learnt."""

    def __init__(self, symbol: str, message: str, code: int | None = None, *, uncertain: bool = False):
        super().__init__(f"{symbol}: {message}" + (f" (Binance code {code})" if code is not None else ""))
        self.symbol, self.message, self.code = symbol, message, code
        self.uncertain = uncertain  # the order may have been executed after all

    @classmethod
    def from_error(cls, symbol: str, error: BinanceAPIError) -> OrderRejected:
        return cls(symbol, error.message, error.code)


@dataclass(frozen=True)
class Fill:
    price: float
    quantity: float
    fees: float
    time: dt.datetime
    order_id: str | None = None
    reason: str | None = None  # set when the exchange closed the position itself (stop_loss, take_profit, ...)
    realized_pnl: float | None = None  # Binance's realised PnL of a closing fill (before fees)
    liquidated: bool = False
    slippage: float = 0.0  # paper: the fill's cost against the reference price, USDT (> 0: worse)


@dataclass(frozen=True)
class BookSide:
    """The levels of one side of a book a market order would take (asks to buy, bids to sell), best first."""

    prices: Sequence[float]
    sizes: Sequence[float]


@dataclass(frozen=True)
class ExchangePosition:
    """A non-zero position as /fapi/v3/positionRisk reports it (one-way mode)."""

    symbol: str
    amount: float  # signed: > 0 long
    entry_price: float
    mark_price: float
    update_time: dt.datetime | None

    @property
    def side(self) -> str:
        return "LONG" if self.amount > 0 else "SHORT"


@dataclass(frozen=True)
class AccountState:
    """What the exchange holds: the truth a live session reconciles with."""

    positions: dict[str, ExchangePosition]
    wallet_balance: float  # USDT
    available_balance: float
    open_orders: list[dict[str, Any]]
    open_algo_orders: list[dict[str, Any]]


class Executor(Protocol):
    mode: str
    protects_on_exchange: bool

    async def open(self, symbol: str, side: str, quantity: float, reference_price: float,
                   time: dt.datetime, client_id: str, book: BookSide | None = None) -> Fill: ...

    async def close(self, position: Position, reference_price: float, time: dt.datetime,
                    book: BookSide | None = None) -> Fill: ...

    async def protect(self, position: Position) -> None: ...

    async def renew_protection(self, position: Position) -> None: ...

    async def tidy_protection(self, positions: Sequence[Position]) -> tuple[list[str], list[Position]]: ...

    async def find_entry(self, symbol: str, client_id: str) -> Fill | None: ...

    async def account_state(self) -> AccountState | None: ...

    async def exit_on_exchange(self, position: Position) -> Fill | None: ...

    async def real_fill(self, symbol: str, fill: Fill) -> Fill: ...

    async def exit_reason(self, position: Position, order_ids: set[str]) -> tuple[str, bool]: ...

    async def shutdown(self) -> None: ...


@dataclass(frozen=True)
class PaperExecutor:
    """Simulated market orders (see module docstring). `side` is the position's side."""

    fee_rate: float = TAKER_FEE_RATE  # market orders pay the taker fee
    slippage_bps: float = 1.0  # without a book (or beyond its levels): the fill's distance from the price
    exchange_info: dict[str, Any] | None = None  # None: PAPER_EXCHANGE_INFO
    mode: str = "paper"
    protects_on_exchange: bool = False  # the session's own price checks are the stops

    def filters(self, symbol: str) -> SymbolFilters:
        return paper_filters(self.exchange_info, symbol)

    def _fill(self, symbol: str, order_sign: int, size: float, reference_price: float, time: dt.datetime,
              book: BookSide | None) -> Fill:
        filters = self.filters(symbol)
        price = walk_book(book, size, self.slippage_bps) if book is not None else None
        if price is None:
            price = reference_price * (1 + order_sign * self.slippage_bps / 10_000)
        price = float(filters.round_price(price, against=order_sign))
        slippage = order_sign * (price - reference_price) * size
        return Fill(price, size, price * size * self.fee_rate, time, slippage=slippage)

    async def open(self, symbol: str, side: str, quantity: float, reference_price: float, time: dt.datetime,
                   client_id: str = "", book: BookSide | None = None) -> Fill:
        size = checked_quantity(self.filters(symbol), quantity, reference_price, reduce_only=False)
        return self._fill(symbol, direction(side), float(size), reference_price, time, book)

    async def close(self, position: Position, reference_price: float, time: dt.datetime,
                    book: BookSide | None = None) -> Fill:
        parts = close_parts(self.filters(position.symbol), position.quantity, reference_price)  # as live sends it
        return self._fill(position.symbol, -direction(position.side), float(sum(parts)), reference_price, time, book)

    async def protect(self, position: Position) -> None:
        """Paper positions are protected by the session's own price checks."""

    async def renew_protection(self, position: Position) -> None:
        """Nothing on an exchange to renew."""

    async def tidy_protection(self, positions: Sequence[Position]) -> tuple[list[str], list[Position]]:
        return [], []

    async def find_entry(self, symbol: str, client_id: str) -> Fill | None:
        return None  # nothing of paper's is ever on the exchange

    async def account_state(self) -> AccountState | None:
        return None  # no exchange to reconcile with

    async def exit_on_exchange(self, position: Position) -> Fill | None:
        return None

    async def real_fill(self, symbol: str, fill: Fill) -> Fill:
        return fill

    async def exit_reason(self, position: Position, order_ids: set[str]) -> tuple[str, bool]:
        return "manual", False

    async def shutdown(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class SymbolFilters:
    """The exchangeInfo filters an order must satisfy."""

    symbol: str
    step_size: Decimal
    min_qty: Decimal
    min_notional: Decimal
    tick_size: Decimal = Decimal("0")  # PRICE_FILTER; 0: prices are not rounded
    max_qty: Decimal | None = None  # MARKET_LOT_SIZE (else LOT_SIZE) maxQty: the most one MARKET order holds

    def round_quantity(self, quantity: float) -> Decimal:
        """Down to the step size (never more than asked)."""
        return (Decimal(repr(quantity)) / self.step_size).to_integral_value(ROUND_DOWN) * self.step_size

    def round_price(self, price: float, *, against: int = 0) -> Decimal:
        """To the nearest tick (a trigger price must sit on the tick grid); with `against` +1 (a buy) up,
        -1 (a sell) down: a simulated fill never gets a better price from the rounding."""
        if self.tick_size <= 0:
            return Decimal(repr(price))
        rounding = ROUND_CEILING if against > 0 else ROUND_FLOOR if against < 0 else ROUND_HALF_UP
        return (Decimal(repr(price)) / self.tick_size).to_integral_value(rounding) * self.tick_size

    def order_problem(self, quantity: Decimal, price: float, *, reduce_only: bool = False) -> str | None:
        """Why an order of `quantity` at about `price` would be rejected, or None. Binance exempts
        reduce-only orders from the minimum notional (a small position can always be closed)."""
        if quantity < self.min_qty:
            return f"{self.symbol}: quantity {quantity} below the minimum {self.min_qty}"
        if self.max_qty is not None and quantity > self.max_qty:
            return f"{self.symbol}: quantity {quantity} above the MARKET maximum {self.max_qty}"
        notional = quantity * Decimal(repr(price))
        if notional < self.min_notional and not reduce_only:
            return f"{self.symbol}: notional {notional:.2f} USDT below the minimum {self.min_notional}"
        return None


def symbol_filters(exchange_info: dict[str, Any], symbol: str) -> SymbolFilters:
    """LOT_SIZE / MARKET_LOT_SIZE and MIN_NOTIONAL of `symbol` from an exchangeInfo reply (MARKET orders
    need no price rounding)."""
    entry = next((s for s in exchange_info.get("symbols", []) if s.get("symbol") == symbol), None)
    if entry is None:
        raise ValueError(f"exchangeInfo has no symbol {symbol!r}")
    filters = {f["filterType"]: f for f in entry.get("filters", [])}
    missing = {"LOT_SIZE", "MIN_NOTIONAL"} - filters.keys()
    if missing:
        raise ValueError(f"exchangeInfo for {symbol}: missing filters {sorted(missing)}")
    lot = filters.get("MARKET_LOT_SIZE", filters["LOT_SIZE"])
    step = Decimal(lot["stepSize"]) if Decimal(lot["stepSize"]) > 0 else Decimal(filters["LOT_SIZE"]["stepSize"])
    max_qty = Decimal(lot.get("maxQty") or filters["LOT_SIZE"].get("maxQty") or "0")
    return SymbolFilters(
        symbol=symbol,
        step_size=step,
        min_qty=Decimal(lot["minQty"]),
        min_notional=Decimal(filters["MIN_NOTIONAL"].get("notional") or filters["MIN_NOTIONAL"]["minNotional"]),
        tick_size=Decimal(filters.get("PRICE_FILTER", {}).get("tickSize", "0")),
        max_qty=max_qty if max_qty > 0 else None,
    )


def _paper_symbol(symbol: str, tick: str, max_qty: str, min_notional: str) -> dict[str, Any]:
    return {"symbol": symbol, "filters": [
        {"filterType": "PRICE_FILTER", "tickSize": tick},
        {"filterType": "LOT_SIZE", "stepSize": "0.001", "minQty": "0.001", "maxQty": "1000"},
        {"filterType": "MARKET_LOT_SIZE", "stepSize": "0.001", "minQty": "0.001", "maxQty": max_qty},
        {"filterType": "MIN_NOTIONAL", "notional": min_notional},
    ]}


# Offline paper trading and backtests: Binance's filters of the bundled symbols (as listed in 2024), and
# a generic contract for the others.
PAPER_EXCHANGE_INFO: dict[str, Any] = {"symbols": [
    _paper_symbol("BTCUSDT", "0.10", "120", "100"), _paper_symbol("ETHUSDT", "0.01", "2000", "20"),
]}
_GENERIC_PAPER_SYMBOL = _paper_symbol("*", "0", "1000000", "5")


def paper_filters(exchange_info: dict[str, Any] | None, symbol: str) -> SymbolFilters:
    """`symbol`'s filters from `exchange_info` (None: PAPER_EXCHANGE_INFO), the generic contract's when unlisted."""
    info = exchange_info if exchange_info is not None else PAPER_EXCHANGE_INFO
    if not any(entry.get("symbol") == symbol for entry in info.get("symbols", [])):
        info = {"symbols": [{**_GENERIC_PAPER_SYMBOL, "symbol": symbol}]}
    return symbol_filters(info, symbol)


def checked_quantity(filters: SymbolFilters, quantity: float, price: float, *, reduce_only: bool) -> Decimal:
    """`quantity` rounded down to the step size, or `OrderRejected` when the exchange would refuse it
    (live and paper alike: the same check before any order)."""
    rounded = filters.round_quantity(quantity)
    if problem := filters.order_problem(rounded, price, reduce_only=reduce_only):
        raise OrderRejected(filters.symbol, f"order refused before sending: {problem}")
    return rounded


def close_parts(filters: SymbolFilters, quantity: float, price: float) -> list[Decimal]:
    """A reduce-only close of `quantity` as MARKET orders each within `MARKET_LOT_SIZE`: one order, or as few
    near-equal parts on the step grid as fit. `OrderRejected` when a part would be refused (before anything
    is sent or cancelled)."""
    total = filters.round_quantity(quantity)
    count = 1 if filters.max_qty is None else max(1, math.ceil(total / filters.max_qty))
    while True:
        part = (total / count / filters.step_size).to_integral_value(ROUND_DOWN) * filters.step_size
        parts = [part] * (count - 1) + [total - part * (count - 1)]  # the last takes the rounding's rest
        if filters.max_qty is None or parts[-1] <= filters.max_qty:
            break
        count += 1
    for part in parts:
        if problem := filters.order_problem(part, price, reduce_only=True):
            raise OrderRejected(filters.symbol, f"close refused before sending: {problem}")
    return parts


def walk_book(book: BookSide, quantity: float, beyond_bps: float) -> float | None:
    """The average price of taking `quantity` from `book`'s levels, best first; what they cannot fill goes at
    the last level moved `beyond_bps` further. None without levels."""
    levels = [(price, size) for price, size in zip(book.prices, book.sizes, strict=False) if size and size > 0]
    if not levels:
        return None
    left, cost = quantity, 0.0
    for price, size in levels:
        take = min(left, size)
        cost, left = cost + take * price, left - take
        if left <= 0:
            return cost / quantity
    worse = 1 if len(levels) < 2 or levels[1][0] >= levels[0][0] else -1  # asks rise, bids fall
    return (cost + left * levels[-1][0] * (1 + worse * beyond_bps / 10_000)) / quantity


def check_live_permission(opt_in: bool, api_key: str | None, api_secret: str | None) -> None:
    """Raise `LiveTradingRefused` unless both keys are set and live trading was explicitly enabled."""
    missing = [name for name, present in ((API_KEY_VAR, api_key), (API_SECRET_VAR, api_secret),
                                          (f"{LIVE_OPT_IN_VAR}=1", opt_in)) if not present]
    if missing:
        raise LiveTradingRefused(
            "live trading refused: it needs BINANCE_API_KEY, BINANCE_API_SECRET and WINISWIN_LIVE_TRADING=1 "
            f"together; missing: {', '.join(missing)}. Paper trading needs none of them."
        )


class LiveExecutor:
    """Signed orders on Binance USDT-M (one-way mode), see the module docstring. Build it with `live_executor`."""

    mode = "live"
    protects_on_exchange = True

    def __init__(self, client: BinanceRestClient, exchange_info: dict[str, Any], symbols: Sequence[str] = (), *,
                 fill_timeout: float = 5.0, lookups: int = 3, leverage: int = 5, margin_type: str = "ISOLATED"):
        self._client = client
        self.leverage, self.margin_type = leverage, margin_type
        self._prepared: set[str] = set()  # symbols whose margin type and leverage are set
        self.taker_rates: dict[str, float] = {}  # symbol -> the account's taker commission (commissionRate)
        self._info = exchange_info
        self._filters: dict[str, SymbolFilters] = {}
        self.symbols = list(symbols)
        self.fill_timeout, self.lookups = fill_timeout, lookups
        self._attempts: dict[tuple[str, str], int] = {}  # (trade, role) -> number of its protective order's id
        self._slots = asyncio.Semaphore(CONCURRENT_REQUESTS)
        for symbol in symbols:
            self.filters(symbol)  # unknown symbols fail here, before any order

    @property
    def client(self) -> BinanceRestClient:
        return self._client

    def filters(self, symbol: str) -> SymbolFilters:
        if symbol not in self._filters:
            self._filters[symbol] = symbol_filters(self._info, symbol)
        return self._filters[symbol]

    # -- MARKET orders -----------------------------------------------------------------------------

    async def open(self, symbol: str, side: str, quantity: float, reference_price: float, time: dt.datetime,
                   client_id: str = "", book: BookSide | None = None) -> Fill:
        order_side = "BUY" if direction(side) > 0 else "SELL"
        await self._prepare(symbol)
        return await self._market(symbol, order_side, quantity, reference_price, client_id, reduce_only=False)

    async def _prepare(self, symbol: str) -> None:
        """Margin type and leverage of `symbol`, once, before its first entry."""
        if symbol in self._prepared:
            return
        try:
            try:
                await self._client.set_margin_type(symbol, self.margin_type)
            except BinanceAPIError as error:
                if error.code != NO_NEED_TO_CHANGE_MARGIN_TYPE:
                    raise
            await self._client.set_leverage(symbol, self.leverage)
        except BinanceAPIError as error:
            raise OrderRejected(symbol, f"margin type / leverage not set: {error.message}", error.code) from None
        await self._read_commission(symbol)
        self._prepared.add(symbol)

    async def _read_commission(self, symbol: str) -> None:
        """The account's taker rate on `symbol` (fee estimates until the real commission is known)."""
        try:
            rates = await self._client.commission_rate(symbol)
            self.taker_rates[symbol] = float(rates["takerCommissionRate"])
        except BinanceAPIError as error:  # the estimate stays at the regular tier; real fees come later
            log.warning("%s: commission rate unknown (%s); fees estimated at %g", symbol, error.message, TAKER_FEE_RATE)

    def taker_rate(self, symbol: str) -> float:
        return self.taker_rates.get(symbol, TAKER_FEE_RATE)

    async def close(self, position: Position, reference_price: float, time: dt.datetime,
                    book: BookSide | None = None) -> Fill:
        """Cancel the position's protection, then close it reduce-only (in parts above `MARKET_LOT_SIZE`); when
        Binance holds nothing to reduce any more, the exit is the fill of the order that closed it. A close
        the filters refuse is refused before its protection is touched."""
        parts = close_parts(self.filters(position.symbol), position.quantity, reference_price)
        await self.cancel_protection(position)
        order_side = "SELL" if direction(position.side) > 0 else "BUY"
        try:
            if len(parts) == 1:
                return await self._market(position.symbol, order_side, parts[0], reference_price,
                                          client_order_id(position.trade_uid, "exit"), reduce_only=True)
            return await self._close_in_parts(position, order_side, parts, reference_price)
        except OrderRejected as rejected:
            if rejected.code != REDUCE_ONLY_REJECTED or (fill := await self.exit_on_exchange(position)) is None:
                raise
            return fill

    async def _close_in_parts(self, position: Position, order_side: str, parts: list[Decimal],
                              reference_price: float) -> Fill:
        """Part n goes under the trade's exit id number n; a part an earlier attempt of this close already
        filled is looked up and kept, never sent again."""
        symbol, fills = position.symbol, []
        for number, part in enumerate(parts):
            client_id = client_order_id(position.trade_uid, "exit", number)
            earlier = await self._lookup(symbol, client_id)
            if earlier is not None:
                earlier = await self._until_final(symbol, client_id, earlier)
            if earlier is not None and float(earlier.get("executedQty") or 0) > 0:
                fills.append(await self.real_fill(symbol, _fill_of(earlier, self.taker_rate(symbol))))
                continue
            fills.append(await self._market(symbol, order_side, part, reference_price, client_id, reduce_only=True))
        return combined_fill(fills)

    async def find_entry(self, symbol: str, client_id: str) -> Fill | None:
        """The fill of an entry sent earlier (None: Binance never got it, or nothing of it filled)."""
        order = await self._lookup(symbol, client_id)
        if order is None:
            return None
        order = await self._until_final(symbol, client_id, order)
        if float(order.get("executedQty") or 0) <= 0:
            return None
        return await self.real_fill(symbol, _fill_of(order, self.taker_rate(symbol)))

    async def account_state(self) -> AccountState:
        """Positions, USDT balance, open orders and open algo orders, as the exchange holds them now."""
        try:
            rows = await self._client.position_risk()
            balances = await self._client.balance()
            orders = await self._client.open_orders()
            algo_orders = await self._client.open_algo_orders()
        except BinanceAPIError as error:
            raise OrderRejected("*", f"account state unknown: {error.message}", error.code, uncertain=True) from None
        positions = {row["symbol"]: _exchange_position(row) for row in rows if float(row["positionAmt"]) != 0}
        usdt = next((b for b in balances if b.get("asset") == "USDT"), {})
        return AccountState(positions, float(usdt.get("balance") or 0), float(usdt.get("availableBalance") or 0),
                            orders, algo_orders)

    async def exit_on_exchange(self, position: Position) -> Fill | None:
        """The real exit of `position` the exchange closed (None: no closing fill found): its closing fills
        since the entry, quantity-weighted, with their commission and realised PnL, and the reason."""
        closing_side = "SELL" if direction(position.side) > 0 else "BUY"
        since = int(position.entry_time.timestamp() * 1000)
        try:
            fills = [t for t in await self._client.user_trades(position.symbol, start_time=since)
                     if t["side"] == closing_side]
        except BinanceAPIError as error:
            raise OrderRejected(position.symbol, f"exit fills unknown: {error.message}", error.code,
                                uncertain=True) from None
        fills = _up_to(fills, position.quantity)
        if not fills:
            return None
        reason, liquidated = await self.exit_reason(position, {str(t["orderId"]) for t in fills})
        return _fill_of_trades(fills, reason, liquidated)

    async def exit_reason(self, position: Position, order_ids: set[str]) -> tuple[str, bool]:
        """Why the orders `order_ids` closed `position` (and whether it was liquidated): its stop loss or
        take profit, a liquidation, the session's own close, or by hand."""
        since = int(position.entry_time.timestamp() * 1000)
        for role, _ in PROTECTION:
            for number in range(self._attempts.get((position.trade_uid, role), 0), -1, -1):  # the latest first
                algo = await self._lookup_algo(position.symbol, client_order_id(position.trade_uid, role, number))
                if algo is not None and str(algo.get("actualOrderId") or "") in order_ids:
                    return role, False
        try:
            forced = await self._client.force_orders(position.symbol, start_time=since)
        except BinanceAPIError as error:
            log.warning("%s: liquidations unknown (%s)", position.symbol, error.message)
            forced = []
        if any(str(order["orderId"]) in order_ids for order in forced):
            return "liquidation", True
        own = await self._lookup(position.symbol, client_order_id(position.trade_uid, "exit"))
        if own is not None and str(own["orderId"]) in order_ids:
            return "session_close", False
        return "manual", False

    async def real_fill(self, symbol: str, fill: Fill) -> Fill:
        """`fill` with the real commission and realised PnL of its order's trades (kept as is when unknown)."""
        try:
            trades = await self._client.user_trades(symbol, order_id=fill.order_id)
        except BinanceAPIError as error:
            log.warning("%s: trades of order %s unknown (%s); fee estimated", symbol, fill.order_id, error.message)
            return fill
        return replace(_fill_of_trades(trades, fill.reason), time=fill.time, order_id=fill.order_id) if trades else fill

    async def _market(self, symbol: str, order_side: str, quantity: float | Decimal, reference_price: float,
                      client_id: str, *, reduce_only: bool) -> Fill:
        rounded = checked_quantity(self.filters(symbol), float(quantity), reference_price, reduce_only=reduce_only)

        def send() -> Awaitable[dict[str, Any]]:
            return self._client.new_order(symbol, order_side, "MARKET", quantity=format(rounded, "f"),
                                          reduce_only=reduce_only or None, client_order_id=client_id,
                                          newOrderRespType="RESULT")

        order = await self._send_once(symbol, client_id, send, lambda: self._lookup(symbol, client_id))
        order = await self._until_final(symbol, client_id, order)
        if float(order.get("executedQty") or 0) <= 0:
            raise OrderRejected(symbol, f"order {client_id} ended {order.get('status')} without a fill")
        # A close's real fee and PnL now; an entry's fee is corrected later (protection comes first).
        fill = _fill_of(order, self.taker_rate(symbol))
        return await self.real_fill(symbol, fill) if reduce_only else fill

    async def _send_once(self, symbol: str, client_id: str, send: Callable[[], Awaitable[dict[str, Any]]],
                         lookup: Callable[[], Awaitable[dict[str, Any] | None]]) -> dict[str, Any]:
        """Send; when the outcome is unknown, look the order up by its client id and send again only
        when Binance does not have it."""
        for _ in range(2):
            try:
                return await send()
            except BinanceAPIError as error:
                if not error.unknown_outcome:
                    raise OrderRejected.from_error(symbol, error) from None
                log.warning("%s: order %s, outcome unknown (%s); looking it up", symbol, client_id, error.message)
            found = await lookup()
            if found is not None:
                return found
        raise OrderRejected(symbol, f"order {client_id}: no answer from Binance, twice", uncertain=True)

    async def _lookup(self, symbol: str, client_id: str) -> dict[str, Any] | None:
        return await self._ask(symbol, client_id, lambda: self._client.query_order(symbol, client_id))

    async def _lookup_algo(self, symbol: str, client_id: str) -> dict[str, Any] | None:
        return await self._ask(symbol, client_id, lambda: self._client.query_algo_order(client_id))

    async def _ask(self, symbol: str, client_id: str,
                   query: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any] | None:
        """The order Binance holds under `client_id`, None when it has none; retried while unanswered."""
        pause = 0.1
        for attempt in range(self.lookups):
            try:
                return await query()
            except BinanceAPIError as error:
                if error.not_found:
                    return None
                if not error.unknown_outcome or attempt == self.lookups - 1:
                    raise OrderRejected(symbol, f"order {client_id}: status unknown ({error.message})",
                                        error.code, uncertain=True) from None
            await asyncio.sleep(pause)
            pause *= 2
        raise AssertionError("unreachable")

    async def _until_final(self, symbol: str, client_id: str, order: dict[str, Any]) -> dict[str, Any]:
        """Query a NEW order until it is final; cancel it after `fill_timeout` and keep what filled."""
        deadline, pause = clock.monotonic() + self.fill_timeout, 0.02
        while order.get("status") in _OPEN:
            if clock.monotonic() >= deadline:
                try:
                    await self._client.cancel_order(symbol, client_id)
                except BinanceAPIError as error:
                    log.warning("%s: cancelling unfilled order %s failed: %s", symbol, client_id, error.message)
                return await self._lookup(symbol, client_id) or order
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
            order = await self._lookup(symbol, client_id) or order
        return order

    # -- protection on the exchange ----------------------------------------------------------------

    async def protect(self, position: Position) -> None:
        """Place the stop loss and take profit of `position` together (each once: an existing one is kept);
        when one fails, the first failure (stop loss before take profit) is raised."""
        await self._place_all(position, [role for role, _ in PROTECTION])

    async def renew_protection(self, position: Position) -> None:
        """Place again what `position` lacks on the exchange (expired, rejected, missing), each under a new
        attempt's id; what is still there, whatever its attempt, is kept."""
        held = [order.get("clientAlgoId") for order in await self._open_algo_orders(position.symbol)]
        lacking = [role for role, _ in PROTECTION
                   if not any(belongs_to(client_id, position.trade_uid, role) for client_id in held)]
        for role in lacking:
            self._attempts[(position.trade_uid, role)] = self._attempts.get((position.trade_uid, role), 0) + 1
        await self._place_all(position, lacking)

    async def _place_all(self, position: Position, roles: list[str]) -> None:
        types = dict(PROTECTION)
        outcomes = await asyncio.gather(*(self._place_protection(position, role, types[role]) for role in roles),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _place_protection(self, position: Position, role: str, order_type: str) -> None:
        symbol = position.symbol
        client_id = client_order_id(position.trade_uid, role, self._attempts.get((position.trade_uid, role), 0))
        level = position.stop_loss if role == "stop_loss" else position.take_profit
        trigger = format(self.filters(symbol).round_price(level), "f")
        order_side = "SELL" if direction(position.side) > 0 else "BUY"

        async def send() -> dict[str, Any]:
            try:
                return await self._client.new_algo_order(symbol, order_side, order_type, trigger_price=trigger,
                                                         client_algo_id=client_id)
            except BinanceAPIError as error:
                if error.code != DUPLICATED_CLIENT_ID or (found := await self._lookup_algo(symbol, client_id)) is None:
                    raise
                return found  # already there (an earlier attempt whose reply was lost)

        try:
            order = await self._bounded(self._send_once(symbol, client_id, send,
                                                        lambda: self._lookup_algo(symbol, client_id)))
        except OrderRejected as rejected:  # say which of the two it was
            raise OrderRejected(symbol, f"{role}: {rejected.message}", rejected.code,
                                uncertain=rejected.uncertain) from None
        if order.get("algoStatus") != "NEW":
            raise OrderRejected(symbol, f"{role} order {client_id} is {order.get('algoStatus')}, not working")

    async def cancel_protection(self, position: Position) -> None:
        """Cancel the position's stop loss and take profit; ones already gone (fired, cancelled) are fine."""
        for role, _ in PROTECTION:
            number = self._attempts.get((position.trade_uid, role), 0)
            await self._cancel_algo(position.symbol, client_id=client_order_id(position.trade_uid, role, number))

    async def _cancel_algo(self, symbol: str, *, client_id: str | None = None, algo_id: int | None = None) -> None:
        try:
            await self._client.cancel_algo_order(client_id, algo_id=algo_id)
        except BinanceAPIError as error:
            if error.code not in (-2011, -2013):  # unknown order: not open any more
                raise OrderRejected(symbol, f"cancelling {client_id or algo_id} failed: {error.message}",
                                    error.code) from None

    async def tidy_protection(self, positions: Sequence[Position]) -> tuple[list[str], list[Position]]:
        """Session start: keep our protective orders that are right, cancel ours that protect nothing or
        sit at other levels (orders without our prefix are left alone). Every attempt's id of a position's
        order counts as its own, and the one kept becomes its current attempt. Returns what was cancelled, one
        line each, and the positions that lack a stop loss or a take profit (for `renew_protection`)."""
        wanted = {(p.symbol, role): (p, role, order_type) for p in positions for role, order_type in PROTECTION}
        symbols = sorted({*self.symbols, *(p.symbol for p in positions)})
        held = await asyncio.gather(*(self._bounded(self._open_algo_orders(symbol)) for symbol in symbols))
        kept: set[tuple[str, str]] = set()
        cancelled = []
        for symbol, orders in zip(symbols, held, strict=True):
            for order in orders:
                client_id = order.get("clientAlgoId")
                if not is_ours(client_id):
                    continue  # placed by someone else: not ours to touch
                target = next((wanted[(symbol, role)] for role, _ in PROTECTION if (symbol, role) in wanted
                               and belongs_to(client_id, wanted[(symbol, role)][0].trade_uid, role)), None)
                if target is not None and (symbol, target[1]) not in kept and self._matches(order, *target):
                    kept.add((symbol, target[1]))
                    self._attempts[(target[0].trade_uid, target[1])] = id_number(client_id)
                    continue
                await self._cancel_algo(symbol, algo_id=order["algoId"])
                cancelled.append(f"{symbol}: cancelled {order['orderType']} {client_id} at {order['triggerPrice']}")
        lacking = {p.trade_uid: p for key, (p, _, _) in wanted.items() if key not in kept}
        return cancelled, list(lacking.values())

    async def _bounded(self, call: Awaitable[T]) -> T:
        """`call` once one of the `CONCURRENT_REQUESTS` slots is free."""
        async with self._slots:
            return await call

    async def _open_algo_orders(self, symbol: str) -> list[dict[str, Any]]:
        try:
            return await self._client.open_algo_orders(symbol)
        except BinanceAPIError as error:
            raise OrderRejected(symbol, f"open algo orders unknown: {error.message}", error.code,
                                uncertain=True) from None

    def _matches(self, order: dict[str, Any], position: Position, role: str, order_type: str) -> bool:
        level = position.stop_loss if role == "stop_loss" else position.take_profit
        return (order.get("orderType") == order_type and str(order.get("closePosition")).lower() == "true"
                and Decimal(order["triggerPrice"]) == self.filters(position.symbol).round_price(level))

    async def shutdown(self) -> None:
        await self._client.close()


def _fill_of(order: dict[str, Any], taker_rate: float = TAKER_FEE_RATE, reason: str | None = None) -> Fill:
    """What Binance says filled: `executedQty` at `avgPrice`; the fee estimated at the account's taker rate
    (the real commission is in the user-data stream and /fapi/v1/userTrades)."""
    price, quantity = float(order["avgPrice"]), float(order["executedQty"])
    return Fill(price, quantity, price * quantity * taker_rate, from_epoch_ms(int(order["updateTime"])),
                str(order["orderId"]), reason)


def combined_fill(fills: Sequence[Fill]) -> Fill:
    """One fill of several (the parts of a close): quantity-weighted price, summed fees, PnL and slippage."""
    quantity = sum(fill.quantity for fill in fills)
    pnls = [fill.realized_pnl for fill in fills]
    return Fill(sum(fill.price * fill.quantity for fill in fills) / quantity, quantity, sum(f.fees for f in fills),
                max(fill.time for fill in fills), fills[-1].order_id, next((f.reason for f in fills if f.reason), None),
                None if None in pnls else sum(pnls), any(f.liquidated for f in fills), sum(f.slippage for f in fills))


def _exchange_position(row: dict[str, Any]) -> ExchangePosition:
    updated = int(row.get("updateTime") or 0)
    return ExchangePosition(row["symbol"], float(row["positionAmt"]), float(row["entryPrice"]),
                            float(row.get("markPrice") or 0), from_epoch_ms(updated) if updated else None)


def _up_to(trades: list[dict[str, Any]], quantity: float) -> list[dict[str, Any]]:
    """The first trades (oldest first) that together close `quantity`."""
    taken, total = [], 0.0
    for trade in trades:
        if total >= quantity - 1e-12:
            break
        taken.append(trade)
        total += float(trade["qty"])
    return taken


def _fill_of_trades(trades: list[dict[str, Any]], reason: str | None = None, liquidated: bool = False) -> Fill:
    """One fill of Binance account trades: quantity-weighted price, summed commission and realised PnL."""
    quantity = sum(Decimal(t["qty"]) for t in trades)  # decimal: one fill's price comes back exactly
    price = sum(Decimal(t["price"]) * Decimal(t["qty"]) for t in trades) / quantity
    return Fill(float(price), float(quantity), sum(float(t["commission"]) for t in trades),
                from_epoch_ms(max(int(t["time"]) for t in trades)), str(trades[-1]["orderId"]), reason,
                sum(float(t["realizedPnl"]) for t in trades), liquidated)


async def check_account(client: BinanceRestClient) -> None:
    """Refuse an account in hedge mode or multi-assets mode (`AccountRefused`), before any order."""
    if await client.hedge_mode():
        raise AccountRefused("live trading refused: the account is in hedge mode (dualSidePosition=true); this "
                             "session trades one-way positions only. Switch the account to one-way mode "
                             "(POST /fapi/v1/positionSide/dual dualSidePosition=false). No order was sent.")
    if await client.multi_assets_mode():
        raise AccountRefused("live trading refused: the account is in multi-assets mode (multiAssetsMargin=true); "
                             "this session trades USDT-margined isolated positions only. No order was sent.")


async def live_executor(base_url: str, symbols: list[str], *, opt_in: bool, api_key: str | None,
                        api_secret: str | None, leverage: int = 5, margin_type: str = "ISOLATED") -> LiveExecutor:
    """The live executor, after the permission and account checks, with the symbols' filters from exchangeInfo."""
    check_live_permission(opt_in, api_key, api_secret)
    client = BinanceRestClient(base_url, api_key, api_secret)
    try:
        await check_account(client)
        return LiveExecutor(client, await client.exchange_info(), symbols, leverage=leverage, margin_type=margin_type)
    except BaseException:
        await client.close()
        raise

