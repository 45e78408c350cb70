"""Order execution: paper fills by default; live Binance orders only with keys AND an explicit opt-in.

`PaperExecutor` fills market orders at the reference price (best ask to buy, best bid to sell when
the book is known, else the last close) moved against the trade by `slippage_bps`, and charges the
taker fee: deterministic, so a replay gives the same trades every time.

`LiveExecutor` sends signed MARKET orders through `BinanceRestClient`, with quantities rounded down
to the symbol's step size and checked against its minimum quantity and minimum notional
(`exchangeInfo` filters). It exists only through `live_executor(...)`, which refuses to build it
unless both API keys are set and live trading was explicitly enabled (`WINISWIN_LIVE_TRADING=1`).
Keys are never put in messages.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any, Protocol

from winiswin_pipelines.marketdata.binance import BinanceRestClient
from winiswin_pipelines.times import from_epoch_ms
from winiswin_pipelines.trading.risk import direction

LIVE_OPT_IN_VAR = "WINISWIN_LIVE_TRADING"
API_KEY_VAR = "BINANCE_API_KEY"
API_SECRET_VAR = "BINANCE_API_SECRET"
TAKER_FEE_RATE = 0.0004  # Binance USDT-M default taker fee


class LiveTradingRefused(RuntimeError):
    """Live execution was asked for without both API keys and the explicit opt-in."""


@dataclass(frozen=True)
class Fill:
    price: float
    quantity: float
    fees: float
    time: dt.datetime
    order_id: str | None = None


class Executor(Protocol):
    mode: str

    async def open(self, symbol: str, side: str, quantity: float, reference_price: float,
                   time: dt.datetime) -> Fill: ...

    async def close(self, symbol: str, side: str, quantity: float, reference_price: float,
                    time: dt.datetime) -> Fill: ...

    async def shutdown(self) -> None: ...


@dataclass(frozen=True)
class PaperExecutor:
    """Simulated market orders (see module docstring). `side` is the position's side."""

    fee_rate: float = TAKER_FEE_RATE
    slippage_bps: float = 1.0
    mode: str = "paper"

    def _fill(self, order_sign: int, quantity: float, reference_price: float, time: dt.datetime) -> Fill:
        price = reference_price * (1 + order_sign * self.slippage_bps / 10_000)
        return Fill(price, quantity, abs(price * quantity) * self.fee_rate, time)

    async def open(self, symbol: str, side: str, quantity: float, reference_price: float, time: dt.datetime) -> Fill:
        return self._fill(direction(side), quantity, reference_price, time)

    async def close(self, symbol: str, side: str, quantity: float, reference_price: float, time: dt.datetime) -> Fill:
        return self._fill(-direction(side), quantity, reference_price, time)

    async def shutdown(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class SymbolFilters:
    """The exchangeInfo filters an order must satisfy."""

    symbol: str
    step_size: Decimal
    min_qty: Decimal
    min_notional: Decimal

    def round_quantity(self, quantity: float) -> Decimal:
        """Down to the step size (never more than asked)."""
        return (Decimal(repr(quantity)) / self.step_size).to_integral_value(ROUND_DOWN) * self.step_size

    def order_problem(self, quantity: Decimal, price: float) -> str | None:
        """Why an order of `quantity` at about `price` would be rejected, or None."""
        if quantity < self.min_qty:
            return f"{self.symbol}: quantity {quantity} below the minimum {self.min_qty}"
        notional = quantity * Decimal(repr(price))
        if notional < self.min_notional:
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
    return SymbolFilters(
        symbol=symbol,
        step_size=step,
        min_qty=Decimal(lot["minQty"]),
        min_notional=Decimal(filters["MIN_NOTIONAL"].get("notional") or filters["MIN_NOTIONAL"]["minNotional"]),
    )


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
    """Signed MARKET orders on Binance USDT-M (one-way mode). Build it with `live_executor`."""

    mode = "live"

    def __init__(self, client: BinanceRestClient, filters: dict[str, SymbolFilters]):
        self._client = client
        self._filters = filters

    async def _order(self, symbol: str, order_side: str, quantity: float, reference_price: float,
                     time: dt.datetime, *, reduce_only: bool) -> Fill:
        filters = self._filters.get(symbol)
        if filters is None:
            raise ValueError(f"no exchange filters for {symbol}; the session did not load exchangeInfo for it")
        rounded = filters.round_quantity(quantity)
        if problem := filters.order_problem(rounded, reference_price):
            raise ValueError(f"order refused before sending: {problem}")
        reply = await self._client.new_order(symbol, order_side, "MARKET", quantity=format(rounded, "f"),
                                             reduce_only=reduce_only or None, newOrderRespType="RESULT")
        # A reply that does not report the fill (status NEW) is taken at the requested quantity and
        # the reference price; reconciling with the user-data stream is not implemented yet.
        price = float(reply.get("avgPrice") or 0) or reference_price
        filled = float(reply.get("executedQty") or 0) or float(rounded)
        fill_time = from_epoch_ms(reply["updateTime"]) if reply.get("updateTime") else time
        # Commission is only in the user-data stream; estimate it at the taker rate until reconciled.
        return Fill(price, filled, price * filled * TAKER_FEE_RATE, fill_time, str(reply.get("orderId")))

    async def open(self, symbol: str, side: str, quantity: float, reference_price: float, time: dt.datetime) -> Fill:
        order_side = "BUY" if direction(side) > 0 else "SELL"
        return await self._order(symbol, order_side, quantity, reference_price, time, reduce_only=False)

    async def close(self, symbol: str, side: str, quantity: float, reference_price: float, time: dt.datetime) -> Fill:
        order_side = "SELL" if direction(side) > 0 else "BUY"
        return await self._order(symbol, order_side, quantity, reference_price, time, reduce_only=True)

    async def shutdown(self) -> None:
        await self._client.close()


async def live_executor(base_url: str, symbols: list[str], *, opt_in: bool, api_key: str | None,
                        api_secret: str | None) -> LiveExecutor:
    """The live executor, after the permission check, with the symbols' filters from exchangeInfo."""
    check_live_permission(opt_in, api_key, api_secret)
    client = BinanceRestClient(base_url, api_key, api_secret)
    try:
        info = await client.exchange_info()
        return LiveExecutor(client, {symbol: symbol_filters(info, symbol) for symbol in symbols})
    except BaseException:
        await client.close()
        raise

