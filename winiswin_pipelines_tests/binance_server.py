"""A local Binance USDT-M server on 127.0.0.1 for tests and offline tries: the same REST and
websocket protocol, either simulating a market or replaying a recorded capture.

Simulated (the default), it runs a market per symbol (an L2 book, trades, klines) on its own
exchange clock, which advances `exchange_step` per tick (a tick every `tick_seconds` of real time),
so 1m bars close in a fraction of a second. With `history_from`, deterministic klines also exist for
every interval from that day up to the simulated clock's start (what a REST backfill pages through).

Replaying (`replay=[capture files]`), it streams the capture's messages in their recorded order,
paced by their receive times divided by `speed` (None: as fast as the client takes them), starting
when the first websocket client connects. A subscription to `<sym>@depth@<any speed>` gets the
capture's depth diffs (relabelled with the subscribed name); `<sym>@kline_1m` gets closed 1m klines
built from the capture's trades by the import's own aggregation (only bars the capture saw whole,
as the import keeps them); other streams get the capture's messages of the same name. A REST depth
request is answered with the capture's recorded REST snapshot (held until the replay reaches it) the
first time after the replay reached it, and afterwards with the book the replay has built so far
(after a gap or a dropped connection a client needs a fresher snapshot than the recorded one).

It serves
- REST: /fapi/v1/ping, /time, /exchangeInfo, /depth, /klines (startTime / endTime / limit paging as
  Binance does, up to 1,500 a page, the bar in progress last), /fundingRate (a deterministic funding
  event every 8 hours, 00:00/08:00/16:00 UTC, from 2019-09-10 up to the server's clock; startTime /
  endTime inclusive, up to 1,000 a page from startTime, the latest 200 without either; its own limit
  of `funding_limit` requests per 5 minutes, 429 beyond), and the signed endpoints of an
  account (`_Account`): /fapi/v1/order (POST, GET, DELETE; conditional types refused with -4120
  since the Algo Order API took them over; a quantity beyond MARKET_LOT_SIZE / LOT_SIZE maxQty refused
  with -4005), /fapi/v1/algoOrder (POST, GET, DELETE),
  /fapi/v1/openAlgoOrders, /fapi/v3/positionRisk and /fapi/v2/balance, checking the API key, the
  HMAC-SHA256 signature over the query (+ body) and the timestamp against `recvWindow` as Binance
  does. Every request costs Binance's
  request weight: the IP's weight in the last `weight_window` seconds is returned in
  `X-MBX-USED-WEIGHT-1M`, and beyond `weight_limit` requests are refused with 429 and Retry-After;
- websocket: /stream?streams=<sym>@kline_<iv>/<sym>@bookTicker/<sym>@depth@100ms with messages
  {"stream": ..., "data": ...} in Binance's field layout; and the user-data stream at /ws/<listenKey>
  (listenKey from POST /fapi/v1/listenKey, kept alive by PUT, -1125 once it is gone), pushing
  ORDER_TRADE_UPDATE, ACCOUNT_UPDATE (ORDER, FUNDING_FEE), ALGO_UPDATE and listenKeyExpired as
  Binance does; `expire_listen_key`, `charge_funding` and `liquidate` drive it from tests.
On demand it drops every websocket connection (optionally refusing new ones for a while) and
injects a depth-sequence gap (one diff is applied to its book but not sent). Simulating, it
remembers the top of its book after every update id, so a test can check a client's rebuilt book.

Standalone (from the project folder), e.g. replaying the bundled capture at 10x real time:

    .venv/bin/python -m winiswin_pipelines_tests.binance_server --port 8090 --speed 10 \
        --replay winiswin_pipelines/sample_data/market/hftbacktest_usdm_btcusdt_20240718.gz \
                 winiswin_pipelines/sample_data/market/hftbacktest_usdm_btcusdt_20240719.gz

REST on http://127.0.0.1:8090, websocket on ws://127.0.0.1:8091 (--ws-port to choose); Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import heapq
import hmac
import json
import math
import random
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

from winiswin_pipelines.marketdata.binance import request_weight  # Binance's documented weights
from winiswin_pipelines.marketdata.capture import REST_DEPTH, CaptureMessage, read_capture, stream_symbol
from winiswin_pipelines.marketdata.klines import aggregate_trades_to_klines, interval_ms, trades_from_capture
from winiswin_pipelines.marketdata.orderbook import OrderBook

TICK = 0.1  # price grid
LOT = 0.001  # quantity grid
LOT_MAX_QTY = 1_000.0  # LOT_SIZE maxQty (LIMIT orders)
MARKET_MAX_QTY = 120.0  # MARKET_LOT_SIZE maxQty: the most one MARKET order may hold
START_MS = 1_721_347_200_000  # 2024-07-19 00:00:00 UTC: the simulated exchange clock starts here
HISTORY_DEPTH = 20
BINANCE_WEIGHT_LIMIT = 2_400  # request weight per minute per IP
MAX_KLINES_LIMIT = 1_500
FUNDING_FROM_MS = 1_568_073_600_000  # 2019-09-10 00:00 UTC: the first funding event the server knows
FUNDING_INTERVAL_MS = 8 * 3_600_000  # 00:00, 08:00, 16:00 UTC
MAX_FUNDING_LIMIT = 1_000
FUNDING_LIMIT = 500  # /fapi/v1/fundingRate (with /fundingInfo) requests per 5 minutes per IP


def _price(ticks: int) -> str:
    return f"{ticks * TICK:.1f}"


def _qty(lots: int) -> str:
    return f"{lots * LOT:.3f}"


@dataclass
class _Bar:
    open_ms: int
    close_ms: int
    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    volume: float = 0.0
    quote: float = 0.0
    count: int = 0
    buy_volume: float = 0.0
    buy_quote: float = 0.0

    def add(self, price: float, qty: float, taker_buy: bool) -> None:
        if self.count == 0:
            self.open = self.high = self.low = price
        self.high, self.low, self.close = max(self.high, price), min(self.low, price), price
        self.volume += qty
        self.quote += price * qty
        self.count += 1
        if taker_buy:
            self.buy_volume += qty
            self.buy_quote += price * qty

    def rest_row(self) -> list[Any]:
        return [self.open_ms, f"{self.open:.1f}", f"{self.high:.1f}", f"{self.low:.1f}", f"{self.close:.1f}",
                f"{self.volume:.3f}", self.close_ms, f"{self.quote:.4f}", self.count, f"{self.buy_volume:.3f}",
                f"{self.buy_quote:.4f}", "0"]

    def stream_data(self, symbol: str, interval: str, closed: bool) -> dict[str, Any]:
        row = self.rest_row()
        return {"t": self.open_ms, "T": self.close_ms, "s": symbol, "i": interval, "o": row[1], "h": row[2],
                "l": row[3], "c": row[4], "v": row[5], "n": self.count, "x": closed, "q": row[7], "V": row[9],
                "Q": row[10], "B": "0"}


@dataclass
class _Market:
    symbol: str
    intervals: tuple[str, ...]
    rng: random.Random
    bids: dict[int, int] = field(default_factory=dict)  # price ticks -> lots
    asks: dict[int, int] = field(default_factory=dict)
    update_id: int = 1_000_000
    bars: dict[str, _Bar] = field(default_factory=dict)
    closed_bars: dict[str, list[_Bar]] = field(default_factory=dict)
    history: dict[int, tuple[list[float], list[float], list[float], list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mid = 600_000 + self.rng.randrange(10_000)
        for level in range(1, 31):
            self.bids[mid - level] = self.rng.randrange(1, 5_000)
            self.asks[mid + level] = self.rng.randrange(1, 5_000)
        self._remember()

    def step(self, now_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """One tick: book changes, trades, bars. Returns (stream suffix, data) messages."""
        first = self.update_id + 1
        changes_b, changes_a = [], []
        for _ in range(self.rng.randrange(1, 4)):
            self._change_level(changes_b, changes_a)
        previous, self.update_id = self.update_id, self.update_id + self.rng.randrange(1, 4)
        self._remember()
        messages = [("depth@100ms", {"e": "depthUpdate", "E": now_ms, "T": now_ms, "s": self.symbol, "U": first,
                                     "u": self.update_id, "pu": previous, "b": changes_b, "a": changes_a})]
        best_bid, best_ask = max(self.bids), min(self.asks)
        messages.append(("bookTicker", {"e": "bookTicker", "u": self.update_id, "s": self.symbol,
                                        "b": _price(best_bid), "B": _qty(self.bids[best_bid]), "a": _price(best_ask),
                                        "A": _qty(self.asks[best_ask]), "T": now_ms, "E": now_ms}))
        for interval in self.intervals:
            messages += self._advance_bar(interval, now_ms, best_bid, best_ask)
        return messages

    def _change_level(self, changes_b: list, changes_a: list) -> None:
        if self.rng.random() < 0.5:
            side, other, changes, sign = self.bids, self.asks, changes_b, -1
        else:
            side, other, changes, sign = self.asks, self.bids, changes_a, 1
        inside = min(other) if sign < 0 else max(other)
        price = inside + sign * self.rng.randrange(1, 12)
        if price in side and len(side) > 10 and self.rng.random() < 0.3:
            del side[price]
            changes.append([_price(price), _qty(0)])
        else:
            side[price] = self.rng.randrange(1, 5_000)
            changes.append([_price(price), _qty(side[price])])

    def _advance_bar(self, interval: str, now_ms: int, best_bid: int, best_ask: int) -> list[tuple[str, dict]]:
        step = interval_ms(interval)
        messages = []
        bar = self.bars.get(interval)
        if bar is not None and now_ms > bar.close_ms:
            self.closed_bars.setdefault(interval, []).append(bar)
            messages.append((f"kline_{interval}", self._kline_event(bar, interval, now_ms, closed=True)))
            bar = None
        if bar is None:
            open_ms = now_ms // step * step
            bar = self.bars[interval] = _Bar(open_ms, open_ms + step - 1)
        taker_buy = self.rng.random() < 0.5
        bar.add(float(_price(best_ask if taker_buy else best_bid)), float(_qty(self.rng.randrange(1, 500))), taker_buy)
        messages.append((f"kline_{interval}", self._kline_event(bar, interval, now_ms, closed=False)))
        return messages

    def _kline_event(self, bar: _Bar, interval: str, now_ms: int, *, closed: bool) -> dict[str, Any]:
        return {"e": "kline", "E": now_ms, "s": self.symbol, "k": bar.stream_data(self.symbol, interval, closed)}

    def _remember(self) -> None:
        bids = sorted(self.bids, reverse=True)[:HISTORY_DEPTH]
        asks = sorted(self.asks)[:HISTORY_DEPTH]
        self.history[self.update_id] = (
            [float(_price(p)) for p in bids], [float(_qty(self.bids[p])) for p in bids],
            [float(_price(p)) for p in asks], [float(_qty(self.asks[p])) for p in asks],
        )

    def snapshot(self, limit: int, now_ms: int) -> dict[str, Any]:
        bids = sorted(self.bids, reverse=True)[:limit]
        asks = sorted(self.asks)[:limit]
        return {"lastUpdateId": self.update_id, "E": now_ms, "T": now_ms,
                "bids": [[_price(p), _qty(self.bids[p])] for p in bids],
                "asks": [[_price(p), _qty(self.asks[p])] for p in asks]}


# -- the account: orders, conditional (algo) orders, positions ------------------------------------------

CONDITIONAL_TYPES = ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")
ALGO_TYPES_SERVED = ("STOP_MARKET", "TAKE_PROFIT_MARKET")
CLIENT_ID_PATTERN = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
OPEN_ORDER_STATUSES = ("NEW", "PARTIALLY_FILLED")


@dataclass
class _Position:
    amount: float = 0.0  # signed: > 0 long, < 0 short (one-way mode)
    entry_price: float = 0.0
    update_time: int = 0

    def apply(self, signed_qty: float, price: float) -> float:
        """A fill of `signed_qty` (BUY > 0) at `price`: average in when it adds, keep the entry when it
        reduces. Returns the realised PnL of the part it closed."""
        new = self.amount + signed_qty
        realised = 0.0
        if self.amount != 0 and (self.amount > 0) != (signed_qty > 0):
            closed = min(abs(signed_qty), abs(self.amount))
            realised = closed * (price - self.entry_price) * (1 if self.amount > 0 else -1)
        if self.amount == 0 or (self.amount > 0) == (signed_qty > 0):
            self.entry_price = (self.entry_price * abs(self.amount) + price * abs(signed_qty)) / abs(new)
        elif abs(new) < 1e-12:
            self.entry_price = 0.0
        elif (new > 0) != (self.amount > 0):
            self.entry_price = price  # flipped
        self.amount = 0.0 if abs(new) < 1e-12 else round(new, 9)
        return realised


class _Account:
    """A one-way-mode USDT-M account as Binance keeps it: orders by id and client id, algo orders
    with their lifecycle (NEW -> TRIGGERED -> FINISHED, CANCELED, EXPIRED), positions, mark prices.

    MARKET orders fill at once at the mark price when a test set one, else at the best ask (buy) or
    bid (sell) of the market (`price_of`). Tests drive it: `reject_next` refuses a symbol's next order
    with a Binance error, `fill_after_queries` answers orders NEW and fills them only after that many
    queries, `drop_next_reply` executes an order but drops the connection before replying, and
    `set_mark_price` moves the mark price, triggering the conditional orders it crosses."""

    def __init__(self, price_of):
        self.price_of = price_of  # (symbol, side) -> the market's price for a MARKET order of that side
        self.orders: dict[int, dict[str, Any]] = {}
        self.algo_orders: dict[int, dict[str, Any]] = {}
        self.positions: dict[str, _Position] = {}
        self.marks: dict[str, float] = {}
        self.reject_next: dict[str, tuple[int, str]] = {}
        self.wallet = 10_000.0  # USDT
        self.taker_rate = 0.0005  # Binance's regular tier
        self.trades: list[dict[str, Any]] = []  # every fill, as /fapi/v1/userTrades lists them
        self.leverage: dict[str, int] = {}  # symbol -> leverage (Binance's default: 20)
        self.margin_type: dict[str, str] = {}  # symbol -> ISOLATED / CROSSED (default CROSSED)
        self.dual_side = False  # hedge mode
        self.multi_assets = False
        self.emit = lambda event: None  # a user-data stream event (set by the server)
        self.fill_after_queries = 0
        self.drop_next_reply = False
        self._pending_fills: dict[int, int] = {}  # order id -> queries left before it fills
        self._next_id = 1_000

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def position(self, symbol: str) -> _Position:
        return self.positions.setdefault(symbol, _Position())

    def mark(self, symbol: str) -> float:
        return self.marks.get(symbol) or (self.price_of(symbol, "BUY") + self.price_of(symbol, "SELL")) / 2

    # -- orders ------------------------------------------------------------------------------------

    def new_order(self, params: dict[str, str], now_ms: int) -> dict[str, Any]:
        symbol, side, order_type = params["symbol"], params["side"], params["type"]
        if order_type in CONDITIONAL_TYPES:
            raise _Refused(400, -4120, "Order type not supported for this endpoint. Please use the Algo Order API "
                                       "endpoints instead.")
        if side not in ("BUY", "SELL"):
            raise _Refused(400, -1117, "Invalid side.")
        if order_type not in ("MARKET", "LIMIT"):
            raise _Refused(400, -1116, "Invalid orderType.")
        client_id = params.get("newClientOrderId") or f"local-{self._next_id + 1}"
        if not CLIENT_ID_PATTERN.match(client_id):
            raise _Refused(400, -1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is "
                                       "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        if any(o["clientOrderId"] == client_id and o["status"] in OPEN_ORDER_STATUSES for o in self.orders.values()):
            raise _Refused(400, -4116, "ClientOrderId is duplicated.")
        if symbol in self.reject_next:
            code, message = self.reject_next.pop(symbol)
            raise _Refused(400, code, message)
        quantity = float(params["quantity"])
        limit = MARKET_MAX_QTY if order_type == "MARKET" else LOT_MAX_QTY  # MARKET_LOT_SIZE / LOT_SIZE
        if quantity > limit and not params.get("_closes_position"):  # a fired closePosition order closes it all
            raise _Refused(400, -4005, "Quantity greater than max quantity.")
        reduce_only = params.get("reduceOnly") == "true"
        position = self.position(symbol)
        if reduce_only:
            closing = position.amount > 0 and side == "SELL" or position.amount < 0 and side == "BUY"
            if not closing:
                raise _Refused(400, -2022, "ReduceOnly Order is rejected.")
            quantity = min(quantity, abs(position.amount))
        order = {"orderId": self._new_id(), "symbol": symbol, "status": "NEW", "clientOrderId": client_id,
                 "price": params.get("price", "0"), "avgPrice": "0.00000", "origQty": params["quantity"],
                 "executedQty": "0", "cumQuote": "0", "timeInForce": params.get("timeInForce", "GTC"),
                 "type": order_type, "reduceOnly": reduce_only, "closePosition": False, "side": side,
                 "positionSide": "BOTH", "workingType": "CONTRACT_PRICE", "origType": order_type,
                 "time": now_ms, "updateTime": now_ms, "_quantity": quantity}
        self.orders[order["orderId"]] = order
        self._order_event(order, now_ms)
        if order_type == "MARKET":
            if self.fill_after_queries:
                self._pending_fills[order["orderId"]] = self.fill_after_queries
            else:
                self._fill(order, now_ms)
        return order

    def _fill(self, order: dict[str, Any], now_ms: int, price: float | None = None,
              quantity: float | None = None) -> None:
        """Fill `quantity` (default: what is left) of `order` at `price` (default: the mark, else the market)."""
        symbol, side = order["symbol"], order["side"]
        done = float(order["executedQty"])
        quantity = round(order["_quantity"] - done if quantity is None else quantity, 9)
        price = price if price is not None else self.marks.get(symbol) or self.price_of(symbol, side)
        position = self.position(symbol)
        realised = position.apply(quantity if side == "BUY" else -quantity, price)
        position.update_time = now_ms
        commission = price * quantity * self.taker_rate
        self.wallet += realised - commission
        executed = round(done + quantity, 9)
        average = (float(order["avgPrice"]) * done + price * quantity) / executed
        order.update(status="FILLED" if executed >= order["_quantity"] - 1e-12 else "PARTIALLY_FILLED",
                     avgPrice=f"{average:.5f}", executedQty=f"{executed:.3f}", cumQuote=f"{average * executed:.5f}",
                     updateTime=now_ms)
        trade = {"symbol": symbol, "id": self._new_id(), "orderId": order["orderId"], "side": side,
                 "price": f"{price:.5f}", "qty": f"{quantity:.3f}", "realizedPnl": f"{realised:.8f}",
                 "quoteQty": f"{price * quantity:.5f}", "commission": f"{commission:.8f}", "commissionAsset": "USDT",
                 "time": now_ms, "positionSide": "BOTH", "buyer": side == "BUY", "maker": False}
        self.trades.append(trade)
        if order["status"] == "FILLED":
            self._pending_fills.pop(order["orderId"], None)
        self._order_event(order, now_ms, trade)
        self._account_event("ORDER", now_ms, [symbol])

    # -- user-data stream events (pushed to the listenKey's websocket) ---------------------------------

    def _order_event(self, order: dict[str, Any], now_ms: int, trade: dict[str, Any] | None = None) -> None:
        liquidation = order.get("_liquidation", False)
        execution = ("CALCULATED" if liquidation else "TRADE") if trade else order["status"]
        self.emit({"e": "ORDER_TRADE_UPDATE", "E": now_ms, "T": now_ms, "o": {
            "s": order["symbol"], "c": order["clientOrderId"], "S": order["side"],
            "o": "LIQUIDATION" if liquidation else order["type"], "f": order["timeInForce"], "q": order["origQty"],
            "p": order["price"], "ap": order["avgPrice"], "sp": "0", "x": execution, "X": order["status"],
            "i": order["orderId"], "l": trade["qty"] if trade else "0", "z": order["executedQty"],
            "L": trade["price"] if trade else "0", "N": "USDT", "n": trade["commission"] if trade else "0",
            "T": now_ms, "t": trade["id"] if trade else 0, "b": "0", "a": "0", "m": False, "R": order["reduceOnly"],
            "wt": order["workingType"], "ot": order["origType"], "ps": "BOTH", "cp": order["closePosition"],
            "rp": trade["realizedPnl"] if trade else "0", "pP": False, "si": 0, "ss": 0, "V": "NONE", "pm": "NONE",
            "gtd": 0}})

    def _account_event(self, reason: str, now_ms: int, symbols: Sequence[str], change: float = 0.0) -> None:
        positions = []
        for symbol in symbols:
            position = self.position(symbol)
            mark = self.mark(symbol) if position.amount else 0.0
            positions.append({"s": symbol, "pa": f"{position.amount:.3f}", "ep": f"{position.entry_price:.5f}",
                              "bep": "0", "cr": "0", "up": f"{(mark - position.entry_price) * position.amount:.8f}",
                              "mt": self.margin_type.get(symbol, "CROSSED").lower().replace("crossed", "cross"),
                              "iw": "0", "ps": "BOTH"})
        self.emit({"e": "ACCOUNT_UPDATE", "E": now_ms, "T": now_ms, "a": {
            "m": reason, "B": [{"a": "USDT", "wb": f"{self.wallet:.8f}", "cw": f"{self.wallet:.8f}",
                                "bc": f"{change:.8f}"}], "P": positions}})

    def _algo_event(self, order: dict[str, Any], now_ms: int) -> None:
        self.emit({"e": "ALGO_UPDATE", "T": now_ms, "E": now_ms, "o": {
            "caid": order["clientAlgoId"], "aid": order["algoId"], "at": order["algoType"], "o": order["orderType"],
            "s": order["symbol"], "S": order["side"], "ps": "BOTH", "f": order["timeInForce"], "q": order["quantity"],
            "X": order["algoStatus"], "ai": order["actualOrderId"], "ap": order["actualPrice"],
            "aq": order.get("_executed", "0"), "act": "MARKET" if order["actualOrderId"] else "0",
            "tp": order["triggerPrice"], "p": order["price"], "V": "NONE", "wt": order["workingType"], "pm": "NONE",
            "cp": order["closePosition"], "pP": False, "R": order["reduceOnly"], "tt": order["triggerTime"],
            "gtd": 0, "rm": ""}})

    def charge_funding(self, symbol: str, amount: float, now_ms: int) -> None:
        """A funding fee of `amount` USDT (negative: paid) on `symbol`'s position (isolated: with its P)."""
        self.wallet += amount
        isolated = self.margin_type.get(symbol) == "ISOLATED"
        self._account_event("FUNDING_FEE", now_ms, [symbol] if isolated else [], change=amount)

    def liquidate(self, symbol: str, price: float, now_ms: int) -> dict[str, Any]:
        """The exchange liquidates `symbol`'s whole position at `price` (an `autoclose-` order)."""
        position = self.position(symbol)
        side = "SELL" if position.amount > 0 else "BUY"
        quantity = abs(position.amount)
        order = {"orderId": self._new_id(), "symbol": symbol, "status": "NEW", "clientOrderId": f"autoclose-{now_ms}",
                 "price": f"{price:.5f}", "avgPrice": "0.00000", "origQty": f"{quantity:.3f}", "executedQty": "0",
                 "cumQuote": "0", "timeInForce": "IOC", "type": "LIMIT", "reduceOnly": False, "closePosition": False,
                 "side": side, "positionSide": "BOTH", "workingType": "CONTRACT_PRICE", "origType": "LIMIT",
                 "time": now_ms, "updateTime": now_ms, "_quantity": quantity, "_liquidation": True}
        self.orders[order["orderId"]] = order
        self._fill(order, now_ms, price)
        for algo in self.open_algo_orders({"symbol": symbol}):  # nothing left to protect: the system cancels them
            algo.update(algoStatus="EXPIRED", updateTime=now_ms)
            self._algo_event(algo, now_ms)
        return order

    def user_trades(self, params: dict[str, str], now_ms: int = 0) -> list[dict[str, Any]]:
        limit = int(params.get("limit", 500))
        if not 1 <= limit <= 1000:
            raise _Refused(400, -1130, "Data sent for parameter 'limit' is not valid.")
        start, end = int(params.get("startTime", 0)), int(params.get("endTime", 2**63))
        rows = [t for t in self.trades if t["symbol"] == params["symbol"] and start <= t["time"] <= end
                and str(t["orderId"]) == params.get("orderId", str(t["orderId"]))
                and t["id"] >= int(params.get("fromId", 0))]
        return rows[:limit] if "startTime" in params or "fromId" in params else rows[-limit:]

    def force_orders(self, params: dict[str, str], now_ms: int = 0) -> list[dict[str, Any]]:
        if params.get("autoCloseType", "LIQUIDATION") != "LIQUIDATION":
            return []  # ADL is not simulated
        start, end = int(params.get("startTime", 0)), int(params.get("endTime", 2**63))
        rows = [o for o in self.orders.values() if o.get("_liquidation") and params.get("symbol") in (None, o["symbol"])
                and start <= o["time"] <= end]
        return rows[-int(params.get("limit", 50)):]

    def open_orders(self, params: dict[str, str], now_ms: int = 0) -> list[dict[str, Any]]:
        return [o for o in self.orders.values()
                if o["status"] in OPEN_ORDER_STATUSES and params.get("symbol") in (None, o["symbol"])]

    def balance(self, params: dict[str, str], now_ms: int = 0) -> list[dict[str, Any]]:
        unrealised = sum((self.mark(s) - p.entry_price) * p.amount for s, p in self.positions.items() if p.amount)
        margin = sum(abs(p.amount) * p.entry_price / self.leverage.get(s, 20) for s, p in self.positions.items())
        available = self.wallet + unrealised - margin
        return [{"accountAlias": "SgsR", "asset": "USDT", "balance": f"{self.wallet:.8f}",
                 "crossWalletBalance": f"{self.wallet:.8f}", "crossUnPnl": f"{unrealised:.8f}",
                 "availableBalance": f"{available:.8f}", "maxWithdrawAmount": f"{max(available, 0):.8f}",
                 "marginAvailable": True, "updateTime": now_ms}]

    def set_leverage(self, params: dict[str, str], now_ms: int = 0) -> dict[str, Any]:
        leverage = int(params["leverage"])
        if not 1 <= leverage <= 125:
            raise _Refused(400, -4028, f"Leverage {leverage} is not valid")
        self.leverage[params["symbol"]] = leverage
        return {"leverage": leverage, "maxNotionalValue": "1000000", "symbol": params["symbol"]}

    def set_margin_type(self, params: dict[str, str], now_ms: int = 0) -> dict[str, Any]:
        wanted = params["marginType"]
        if wanted not in ("ISOLATED", "CROSSED"):
            raise _Refused(400, -1116, "Invalid marginType.")
        if self.margin_type.get(params["symbol"], "CROSSED") == wanted:
            raise _Refused(400, -4046, "No need to change margin type.")
        if self.position(params["symbol"]).amount or self.open_orders({"symbol": params["symbol"]}):
            raise _Refused(400, -4048, "Margin type cannot be changed if there exists position.")
        self.margin_type[params["symbol"]] = wanted
        return {"code": 200, "msg": "success"}

    def position_mode(self, params: dict[str, str], now_ms: int = 0) -> dict[str, Any]:
        return {"dualSidePosition": self.dual_side}

    def multi_assets_mode(self, params: dict[str, str], now_ms: int = 0) -> dict[str, Any]:
        return {"multiAssetsMargin": self.multi_assets}

    def commission_rate(self, params: dict[str, str], now_ms: int = 0) -> dict[str, Any]:
        return {"symbol": params["symbol"], "makerCommissionRate": "0.000200",
                "takerCommissionRate": f"{self.taker_rate:.6f}"}

    def find_order(self, params: dict[str, str], now_ms: int) -> dict[str, Any]:
        order = None
        if "orderId" in params:
            order = self.orders.get(int(params["orderId"]))
        elif "origClientOrderId" in params:
            matches = [o for o in self.orders.values() if o["clientOrderId"] == params["origClientOrderId"]]
            order = matches[-1] if matches else None
        else:
            raise _Refused(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if order is None or order["symbol"] != params["symbol"]:
            raise _Refused(400, -2013, "Order does not exist.")
        return order

    def query_order(self, params: dict[str, str], now_ms: int) -> dict[str, Any]:
        order = self.find_order(params, now_ms)
        if order["orderId"] in self._pending_fills:
            self._pending_fills[order["orderId"]] -= 1
            if self._pending_fills[order["orderId"]] <= 0:
                self._fill(order, now_ms)
        return order

    def cancel_order(self, params: dict[str, str], now_ms: int) -> dict[str, Any]:
        order = self.find_order(params, now_ms)
        if order["status"] not in OPEN_ORDER_STATUSES:
            raise _Refused(400, -2011, "Unknown order sent.")
        self._pending_fills.pop(order["orderId"], None)
        order.update(status="CANCELED", updateTime=now_ms)
        self._order_event(order, now_ms)
        return order

    # -- algo orders -------------------------------------------------------------------------------

    def new_algo_order(self, params: dict[str, str], now_ms: int) -> dict[str, Any]:
        symbol, side, order_type = params["symbol"], params["side"], params["type"]
        if params["algoType"] != "CONDITIONAL":
            raise _Refused(400, -1116, "Invalid algoType.")
        if order_type not in CONDITIONAL_TYPES:
            raise _Refused(400, -1116, "Invalid orderType.")
        if order_type not in ALGO_TYPES_SERVED:
            raise _Refused(400, -1116, f"Order type {order_type} is not simulated by the local server.")
        client_id = params.get("clientAlgoId") or f"local-algo-{self._next_id + 1}"
        if not CLIENT_ID_PATTERN.match(client_id):
            raise _Refused(400, -1100, "Illegal characters found in parameter 'clientAlgoId'; legal range is "
                                       "'^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        if any(o["clientAlgoId"] == client_id and o["algoStatus"] == "NEW" for o in self.algo_orders.values()):
            raise _Refused(400, -4116, "ClientOrderId is duplicated.")
        close_position = params.get("closePosition") == "true"
        if close_position and ("quantity" in params or params.get("reduceOnly") == "true"):
            raise _Refused(400, -1106, "Parameter 'quantity' or 'reduceOnly' sent when not required.")
        if not close_position and "quantity" not in params:
            raise _Refused(400, -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
        trigger = float(params["triggerPrice"])
        working_type = params.get("workingType", "CONTRACT_PRICE")
        if self._crossed(side, order_type, trigger, self.mark(symbol)):
            raise _Refused(400, -2021, "Order would immediately trigger.")
        order = {"algoId": self._new_id(), "clientAlgoId": client_id, "algoType": "CONDITIONAL",
                 "orderType": order_type, "symbol": symbol, "side": side, "positionSide": "BOTH",
                 "timeInForce": params.get("timeInForce", "GTC"), "quantity": params.get("quantity", "0"),
                 "algoStatus": "NEW", "actualOrderId": "", "actualPrice": "0.00000",
                 "triggerPrice": params["triggerPrice"], "price": "0.00000", "workingType": working_type,
                 "priceMatch": "NONE", "closePosition": close_position, "priceProtect": False,
                 "reduceOnly": params.get("reduceOnly") == "true", "createTime": now_ms, "updateTime": now_ms,
                 "triggerTime": 0, "goodTillDate": 0}
        self.algo_orders[order["algoId"]] = order
        self._algo_event(order, now_ms)
        return order

    def find_algo_order(self, params: dict[str, str], now_ms: int = 0) -> dict[str, Any]:
        if "algoId" in params:
            order = self.algo_orders.get(int(params["algoId"]))
        elif "clientAlgoId" in params:
            matches = [o for o in self.algo_orders.values() if o["clientAlgoId"] == params["clientAlgoId"]]
            order = matches[-1] if matches else None
        else:
            raise _Refused(400, -1102, "Param 'algoId' or 'clientAlgoId' must be sent, but both were empty/null!")
        if order is None:
            raise _Refused(400, -2013, "Order does not exist.")
        return order

    def cancel_algo_order(self, params: dict[str, str], now_ms: int) -> dict[str, Any]:
        order = self.find_algo_order(params)
        if order["algoStatus"] != "NEW":
            raise _Refused(400, -2011, "Unknown order sent.")
        order.update(algoStatus="CANCELED", updateTime=now_ms)
        self._algo_event(order, now_ms)
        return {"algoId": order["algoId"], "clientAlgoId": order["clientAlgoId"], "code": "200", "msg": "success"}

    def open_algo_orders(self, params: dict[str, str], now_ms: int = 0) -> list[dict[str, Any]]:
        return [o for o in self.algo_orders.values()
                if o["algoStatus"] == "NEW" and params.get("symbol") in (None, o["symbol"])]

    @staticmethod
    def _crossed(side: str, order_type: str, trigger: float, mark: float) -> bool:
        """Whether a mark price at `mark` sets the conditional order off (a stop against the position,
        a take profit with it)."""
        rising = (side == "BUY") == (order_type.startswith("STOP"))  # buy stops and sell take-profits fire on a rise
        return mark >= trigger if rising else mark <= trigger

    def set_mark_price(self, symbol: str, price: float, now_ms: int) -> list[dict[str, Any]]:
        """Move the mark price; the NEW conditional orders it crosses trigger (oldest first) and send
        their MARKET order; returns them."""
        self.marks[symbol] = price
        fired = []
        for order in [o for o in self.algo_orders.values() if o["symbol"] == symbol and o["algoStatus"] == "NEW"]:
            if self._crossed(order["side"], order["orderType"], float(order["triggerPrice"]), price):
                fired.append(self._trigger(order, price, now_ms))
        return fired

    def _trigger(self, order: dict[str, Any], price: float, now_ms: int) -> dict[str, Any]:
        position = self.position(order["symbol"])
        closing = position.amount > 0 and order["side"] == "SELL" or position.amount < 0 and order["side"] == "BUY"
        order.update(triggerTime=now_ms, updateTime=now_ms)
        if not closing:  # nothing left to reduce: the system cancels it
            order["algoStatus"] = "EXPIRED"
            self._algo_event(order, now_ms)
            return order
        order.update(algoStatus="TRIGGERING")
        self._algo_event(order, now_ms)
        quantity = abs(position.amount) if order["closePosition"] else min(float(order["quantity"]),
                                                                           abs(position.amount))
        actual = self.new_order({"symbol": order["symbol"], "side": order["side"], "type": "MARKET",
                                 "quantity": f"{quantity:.3f}", "reduceOnly": "true",
                                 "newClientOrderId": f"algo-{order['algoId']}",
                                 "_closes_position": "true" if order["closePosition"] else ""}, now_ms)
        if actual["status"] != "FILLED":
            self._fill(actual, now_ms, price)
        order.update(algoStatus="FINISHED", actualOrderId=str(actual["orderId"]), actualPrice=actual["avgPrice"],
                     _executed=actual["executedQty"])
        self._algo_event(order, now_ms)
        return order

    def position_risk(self, params: dict[str, str], symbols: Sequence[str]) -> list[dict[str, Any]]:
        rows = []
        for symbol in symbols:
            position = self.positions.get(symbol)
            if params.get("symbol") not in (None, symbol) or position is None or position.amount == 0:
                continue
            mark = self.mark(symbol)
            rows.append({"symbol": symbol, "positionSide": "BOTH", "positionAmt": f"{position.amount:.3f}",
                         "entryPrice": f"{position.entry_price:.5f}", "breakEvenPrice": "0.0",
                         "markPrice": f"{mark:.5f}",
                         "unRealizedProfit": f"{(mark - position.entry_price) * position.amount:.8f}",
                         "liquidationPrice": "0", "isolatedMargin": "0", "notional": f"{mark * position.amount:.5f}",
                         "marginAsset": "USDT", "isolatedWallet": "0", "initialMargin": "0", "maintMargin": "0",
                         "positionInitialMargin": "0", "openOrderInitialMargin": "0", "adl": 0, "bidNotional": "0",
                         "askNotional": "0", "updateTime": position.update_time})
        return rows


def _history_bar(symbol: str, interval: str, open_ms: int) -> _Bar:
    """A deterministic past bar (the same for the same symbol, interval and open time)."""
    step = interval_ms(interval)
    rng = random.Random(f"{symbol}:{interval}:{open_ms}")
    open_ = round(60_000 + rng.uniform(-2_000, 2_000), 1)
    close = round(open_ + rng.uniform(-50, 50), 1)
    bar = _Bar(open_ms, open_ms + step - 1)
    bar.open, bar.close = open_, close
    bar.high, bar.low = round(max(open_, close) + rng.uniform(0, 30), 1), round(min(open_, close) - rng.uniform(0, 30), 1)
    bar.volume = round(rng.uniform(1, 500), 3)
    bar.quote = round(bar.volume * (open_ + close) / 2, 4)
    bar.count = rng.randrange(10, 5_000)
    bar.buy_volume = round(bar.volume * rng.uniform(0.2, 0.8), 3)
    bar.buy_quote = round(bar.buy_volume * (open_ + close) / 2, 4)
    return bar


def funding_event(symbol: str, funding_ms: int) -> dict[str, Any]:
    """The deterministic funding event of `symbol` at `funding_ms` (a multiple of 8 hours), as Binance lists it."""
    rng = random.Random(f"{symbol}:funding:{funding_ms}")
    rate = 0.0001 if rng.random() < 0.6 else rng.uniform(-0.0003, 0.0006)  # mostly the 0.01% interest rate
    mark = _history_bar(symbol, "8h", funding_ms - FUNDING_INTERVAL_MS).close
    return {"symbol": symbol, "fundingTime": funding_ms, "fundingRate": f"{rate:.8f}", "markPrice": f"{mark:.8f}"}


def _num(value: float) -> str:
    return repr(float(value))


@dataclass
class _ReplayBars:
    """Closed bars of one interval built from a replayed symbol's trades, as the import builds them:
    MARKET trades only, quiet intervals filled at the previous close, and only bars the capture saw
    whole (opening at or after its first trade, not touching trades lost between two recorded ones)."""

    symbol: str
    interval: str
    step: int
    first_trade_ms: int | None = None
    open_ms: int | None = None
    trades: list[CaptureMessage] = field(default_factory=list)
    last_close: float | None = None
    last_trade: tuple[int, int] | None = None  # (id, time) of the last trade seen
    lost: list[tuple[int, int]] = field(default_factory=list)
    closed: list[list[Any]] = field(default_factory=list)  # REST rows

    def add(self, message: CaptureMessage) -> list[dict[str, Any]]:
        """Take one trade; returns the kline events (closed bars) it makes known."""
        data = message.data
        trade_ms, trade_id = int(data["T"]), int(data["t"] if message.kind == "trade" else data["a"])
        if self.first_trade_ms is None:
            self.first_trade_ms = trade_ms
        if self.last_trade is not None and trade_id - self.last_trade[0] > 1:
            self.lost.append((self.last_trade[1], trade_ms))
        self.last_trade = (trade_id, trade_ms)
        bucket = trade_ms // self.step * self.step
        events = []
        if self.open_ms is not None and bucket > self.open_ms:
            events += self._close(data["E"])
            for quiet in range(self.open_ms + self.step, bucket, self.step):
                events += self._quiet(quiet, data["E"])
            self.trades = []
        if self.open_ms is None or bucket > self.open_ms:
            self.open_ms = bucket
        self.trades.append(message)
        return events

    def _close(self, event_ms: int) -> list[dict[str, Any]]:
        bars = aggregate_trades_to_klines(trades_from_capture(self.trades), symbol=self.symbol, interval=self.interval)
        if bars.empty:  # no MARKET trade in the interval: a quiet bar
            return self._quiet(self.open_ms, event_ms)
        bar = bars.iloc[0]
        self.last_close = float(bar["close"])
        values = [_num(bar[c]) for c in ("open", "high", "low", "close", "volume", "quote_volume",
                                         "taker_buy_base_volume", "taker_buy_quote_volume")]
        return self._emit(self.open_ms, values, int(bar["trade_count"]), event_ms)

    def _quiet(self, open_ms: int, event_ms: int) -> list[dict[str, Any]]:
        if self.last_close is None:
            return []
        close = _num(self.last_close)
        return self._emit(open_ms, [close] * 4 + ["0.0"] * 4, 0, event_ms)

    def _emit(self, open_ms: int, values: list[str], count: int, event_ms: int) -> list[dict[str, Any]]:
        close_ms = open_ms + self.step - 1
        if open_ms < self.first_trade_ms or any(open_ms <= to and close_ms >= since for since, to in self.lost):
            return []  # a bar the capture did not see whole
        o, h, low, c, v, q, bv, bq = values
        self.closed.append([open_ms, o, h, low, c, v, close_ms, q, count, bv, bq, "0"])
        return [{"e": "kline", "E": event_ms, "s": self.symbol, "k": {
            "t": open_ms, "T": close_ms, "s": self.symbol, "i": self.interval, "f": -1, "L": -1, "o": o, "c": c,
            "h": h, "l": low, "v": v, "n": count, "x": True, "q": q, "V": bv, "Q": bq, "B": "0"}}]


@dataclass
class _ReplaySymbol:
    symbol: str
    book: OrderBook = field(default_factory=OrderBook)
    recorded: dict[str, Any] | None = None  # the last REST snapshot the replay reached
    recorded_served: bool = False
    last_event: tuple[int, int] = (0, 0)  # (E, T) of the last diff replayed
    bars: dict[str, _ReplayBars] = field(default_factory=dict)


class _Replay:
    """The messages of capture files in receive order (a symbol's files chained by time, symbols
    merged), and per symbol what the replay has made of them so far."""

    def __init__(self, paths: Sequence[str | Path], kline_intervals: Sequence[str] = ("1m",)):
        chains: dict[str, list[list[CaptureMessage]]] = {}
        for path in paths:
            messages = list(read_capture(path))
            symbols = {s for m in messages if (s := stream_symbol(m.stream))}
            if len(symbols) != 1:
                raise ValueError(f"{path}: a replayed capture holds one symbol's messages, found {sorted(symbols)}")
            chains.setdefault(symbols.pop(), []).append(messages)
        if not chains:
            raise ValueError("nothing to replay: give at least one capture file")
        streams = []
        for symbol, parts in sorted(chains.items()):
            ordered = [m for part in sorted(parts, key=lambda p: p[0].receive_time) for m in part]
            streams.append([(m.receive_time, symbol, m) for m in ordered])
        self.items = list(heapq.merge(*streams, key=lambda item: item[0]))
        self.symbols = tuple(sorted(chains))
        self.state = {s: _ReplaySymbol(s, bars={iv: _ReplayBars(s, iv, interval_ms(iv)) for iv in kline_intervals})
                      for s in self.symbols}

    def step(self, symbol: str, message: CaptureMessage) -> list[tuple[str, dict[str, Any]]]:
        """Advance by one message; returns what to publish as (stream key, data)."""
        state = self.state[symbol]
        kind = message.kind
        if message.stream == REST_DEPTH:
            state.recorded, state.recorded_served = message.data, False
            state.book.apply_snapshot(message.data)
            return []
        if kind == "depth":
            state.book.apply_diff(message.data)
            state.last_event = (message.data["E"], message.data.get("T", message.data["E"]))
            return [(f"{symbol.lower()}@depth", message.data)]
        out = [(message.stream, message.data)]
        if kind in ("trade", "aggTrade"):
            for interval, bars in state.bars.items():
                out += [(f"{symbol.lower()}@kline_{interval}", event) for event in bars.add(message)]
        return out

    def snapshot(self, symbol: str, limit: int) -> dict[str, Any] | None:
        """The answer to a depth request now, None while there is none (before the first recorded one)."""
        state = self.state[symbol]
        if state.recorded is not None and not state.recorded_served:
            state.recorded_served = True
            return {**state.recorded, "bids": state.recorded["bids"][:limit], "asks": state.recorded["asks"][:limit]}
        if state.recorded is None or not state.book.is_valid:
            return None
        levels = state.book.top(limit)
        event_ms, transaction_ms = state.last_event
        return {"lastUpdateId": state.book.last_update_id, "E": event_ms, "T": transaction_ms,
                "bids": [[_num(p), _num(q)] for p, q in zip(levels.bid_prices, levels.bid_sizes, strict=True)],
                "asks": [[_num(p), _num(q)] for p, q in zip(levels.ask_prices, levels.ask_sizes, strict=True)]}

    def forget_recorded(self) -> None:
        """Clients will need fresher snapshots than the recorded ones (a gap, dropped connections)."""
        for state in self.state.values():
            state.recorded_served = True


class _RestServer(ThreadingHTTPServer):
    request_queue_size = 128  # clients connecting at once (concurrent orders) are queued, not dropped for a second


class LocalBinanceServer:
    """Start with `start()` (or as a context manager); REST at `rest_url`, websocket at `ws_url`."""

    def __init__(self, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"), *, intervals: tuple[str, ...] = ("1m",),
                 api_key: str = "local-test-key", api_secret: str = "local-test-secret",
                 tick_seconds: float = 0.005, exchange_step_ms: int = 1_000, seed: int = 7,
                 replay: Sequence[str | Path] | None = None, speed: float | None = None,
                 history_from: dt.date | None = None, weight_limit: int = BINANCE_WEIGHT_LIMIT,
                 weight_window: float = 60.0, host: str = "127.0.0.1", port: int = 0, ws_port: int = 0,
                 keep_alive: bool = False, latency: float = 0.0):
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be positive (or None: as fast as the client takes it), got {speed}")
        self.replay = _Replay(replay, intervals) if replay else None
        rng = random.Random(seed)
        self.markets = {} if self.replay else {s: _Market(s, intervals, random.Random(rng.random())) for s in symbols}
        self.symbols = self.replay.symbols if self.replay else tuple(symbols)
        self.intervals = tuple(intervals)
        self.speed = speed
        self.history_from_ms = None
        if history_from is not None:
            self.history_from_ms = int(dt.datetime.combine(history_from, dt.time(), dt.UTC).timestamp() * 1000)
        self.api_key, self.api_secret = api_key, api_secret
        self.tick_seconds, self.exchange_step_ms = tick_seconds, exchange_step_ms
        self.now_ms = START_MS
        self.time_offset_ms = 0  # added to /fapi/v1/time and the timestamp check: a drifting exchange clock
        self.weight_limit, self.weight_window = weight_limit, weight_window
        # HTTP/1.1 keep-alive, as Binance does (off: a connection per request, which the tests' clients,
        # used across event loops, rely on)
        self.keep_alive = keep_alive
        self.latency = latency  # seconds each REST reply waits: the network between a client and Binance
        self.max_used_weight = 0
        self.refused_requests = 0  # answered 429
        self.orders: list[dict[str, str]] = []  # the parameters of every POST /fapi/v1/order
        self.algo_requests: list[dict[str, str]] = []  # the parameters of every POST /fapi/v1/algoOrder
        self.account = _Account(self._market_price)
        self.banned_until = 0.0  # time.monotonic() until which every request gets 418 (an IP ban)
        self.failing: dict[str, tuple[int, int, str]] = {}  # path -> (HTTP status, code, message) it answers
        self.requests: list[tuple[str, str]] = []  # (method, path) of every REST request
        self.klines_requests: list[dict[str, str]] = []  # the parameters of every /fapi/v1/klines request
        self.funding_requests: list[dict[str, str]] = []  # the parameters of every /fapi/v1/fundingRate request
        self.funding_limit = FUNDING_LIMIT
        self._funding_times: deque[float] = deque()  # monotonic times of the funding requests of 5 minutes
        self.replayed = 0  # replay: messages replayed so far
        self.replay_done = threading.Event()
        self.connections_opened = 0
        self._weights: deque[tuple[float, int]] = deque()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._gaps: dict[str, int] = {}  # symbol -> depth diffs to let through before dropping one
        self.dropped_diffs = 0
        self._refuse_until = 0.0
        self._connections: dict[ServerConnection, dict[str, list[str]]] = {}  # -> stream key -> names subscribed
        self._user_connections: set[ServerConnection] = set()
        self.listen_key: str | None = None  # the account's active listenKey
        self.listen_keys_created = 0
        self.keepalives = 0
        self.user_connections_opened = 0
        self.account.emit = self._emit_user_event
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._client_connected: asyncio.Event | None = None
        self._host, self._ws_port_wanted = host, ws_port
        self._http = _RestServer((host, port), self._rest_handler())
        self._http.daemon_threads = True
        self.ws_port = 0

    # -- control -----------------------------------------------------------------------------------

    @property
    def rest_url(self) -> str:
        return f"http://{self._host}:{self._http.server_address[1]}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self.ws_port}"

    def start(self) -> LocalBinanceServer:
        threading.Thread(target=self._http.serve_forever, daemon=True, name="binance-rest").start()
        threading.Thread(target=self._loop.run_forever, daemon=True, name="binance-ws").start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        if not self._ready.wait(10):
            raise RuntimeError("the local Binance websocket server did not start")
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def __enter__(self) -> LocalBinanceServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def drop_connections(self, refuse_for: float = 0.0) -> int:
        """Abort every websocket connection (no close frame); refuse new ones for `refuse_for` s."""
        self._refuse_until = time.monotonic() + refuse_for
        if self.replay:
            with self._lock:
                self.replay.forget_recorded()

        def abort() -> int:
            for connection in [*self._connections, *self._user_connections]:
                connection.transport.abort()
            return len(self._connections)

        return self._call_in_loop(abort)

    def inject_gap(self, symbol: str, after: int = 0) -> None:
        """The depth diff of `symbol` that follows `after` more of its diffs (0: the next) changes the
        book but is not sent: clients see a `pu` gap."""
        with self._lock:
            self._gaps[symbol] = after

    def _drop_diff(self, symbol: str) -> bool:
        """Whether this depth diff of `symbol` is the one to drop (with the lock held)."""
        if symbol not in self._gaps:
            return False
        if self._gaps[symbol] > 0:
            self._gaps[symbol] -= 1
            return False
        del self._gaps[symbol]
        self.dropped_diffs += 1
        if self.replay:
            self.replay.forget_recorded()  # the recorded snapshots cannot bridge the gap
        return True

    def book_at(self, symbol: str, update_id: int) -> tuple[list[float], list[float], list[float], list[float]]:
        """(bid prices, bid sizes, ask prices, ask sizes), best first, after update `update_id` (simulating)."""
        with self._lock:
            return self.markets[symbol].history[update_id]

    def closed_bars(self, symbol: str, interval: str) -> list[list[Any]]:
        """The closed bars so far as REST rows (simulated, or built from the replayed trades)."""
        with self._lock:
            if self.replay:
                return list(self.replay.state[symbol].bars[interval].closed)
            return [bar.rest_row() for bar in self.markets[symbol].closed_bars.get(interval, [])]

    def count_requests(self, path: str) -> int:
        with self._lock:
            return sum(1 for _, seen in self.requests if seen == path)

    def _call_in_loop(self, function):
        async def call():
            return function()
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    # -- websocket ---------------------------------------------------------------------------------

    async def _serve(self) -> None:
        self._client_connected = asyncio.Event()
        self._server = await serve(self._on_connection, self._host, self._ws_port_wanted,
                                   process_request=self._check_request, compression=None)
        self.ws_port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._run_replay() if self.replay else self._run_market())
        self._ready.set()

    async def _shutdown(self) -> None:
        self._ticker.cancel()
        self._server.close()
        await self._server.wait_closed()

    def _check_request(self, connection: ServerConnection, request):
        if time.monotonic() < self._refuse_until:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refusing connections for a while\n")
        path = urlsplit(request.path).path
        if path.startswith(("/ws/", "/private/ws/")):
            if path.rsplit("/", 1)[1] != self.listen_key:
                return connection.respond(HTTPStatus.BAD_REQUEST, "invalid listenKey\n")
            return None
        if path != "/stream":
            return connection.respond(HTTPStatus.NOT_FOUND, "only the combined stream /stream is served\n")
        return None

    async def _on_connection(self, connection: ServerConnection) -> None:
        if urlsplit(connection.request.path).path != "/stream":
            await self._on_user_connection(connection)
            return
        query = dict(parse_qsl(urlsplit(connection.request.path).query))
        routes: dict[str, list[str]] = {}
        for name in filter(None, query.get("streams", "").split("/")):
            symbol, _, kind = name.partition("@")
            key = f"{symbol}@depth" if kind.startswith("depth") else name  # any depth speed: the diffs
            routes.setdefault(key, []).append(name)
        self._connections[connection] = routes
        self.connections_opened += 1
        self._client_connected.set()
        try:
            await connection.wait_closed()
        finally:
            self._connections.pop(connection, None)

    async def _on_user_connection(self, connection: ServerConnection) -> None:
        self._user_connections.add(connection)
        self.user_connections_opened += 1
        try:
            await connection.wait_closed()
        finally:
            self._user_connections.discard(connection)

    def _emit_user_event(self, event: dict[str, Any]) -> None:
        """Push an account event to the user-data stream (called with the lock held, so in order)."""
        payload = orjson.dumps(event).decode()
        self._loop.call_soon_threadsafe(lambda: broadcast(self._user_connections, payload))

    def _listen_key(self, method: str, params: dict) -> dict[str, Any]:
        with self._lock:
            if method == "POST":  # the active key (its validity extended), or a new one
                if self.listen_key is None:
                    self.listen_keys_created += 1
                    self.listen_key = hashlib.sha256(f"{self.api_key}:{time.time_ns()}".encode()).hexdigest()
                return {"listenKey": self.listen_key}
            if self.listen_key is None:
                raise _Refused(400, -1125, "This listenKey does not exist.")
            if method == "PUT":
                self.keepalives += 1
                return {"listenKey": self.listen_key}
            self.listen_key = None
            return {}

    def expire_listen_key(self) -> None:
        """The listenKey expires: a listenKeyExpired event, then its connections close."""
        with self._lock:
            key, self.listen_key = self.listen_key, None
            self._emit_user_event({"e": "listenKeyExpired", "E": self._server_time(), "listenKey": key})

        def close() -> None:
            for connection in list(self._user_connections):
                self._loop.create_task(connection.close())

        self._loop.call_soon_threadsafe(close)

    def _publish(self, outgoing: list[tuple[str, dict[str, Any]]]) -> None:
        for key, data in outgoing:
            names: dict[str, list[ServerConnection]] = {}
            for connection, routes in self._connections.items():
                for name in routes.get(key, ()):
                    names.setdefault(name, []).append(connection)
            for name, listeners in names.items():
                broadcast(listeners, orjson.dumps({"stream": name, "data": data}).decode())

    async def _run_market(self) -> None:
        while True:
            with self._lock:
                self.now_ms += self.exchange_step_ms
                outgoing = []
                for symbol, market in self.markets.items():
                    for suffix, data in market.step(self.now_ms):
                        if suffix.startswith("depth") and self._drop_diff(symbol):
                            continue
                        key = f"{symbol.lower()}@depth" if suffix.startswith("depth") else f"{symbol.lower()}@{suffix}"
                        outgoing.append((key, data))
            self._publish(outgoing)
            await asyncio.sleep(self.tick_seconds)

    async def _run_replay(self) -> None:
        await self._client_connected.wait()
        loop = asyncio.get_running_loop()
        items = self.replay.items
        first, started = items[0][0], loop.time()
        for number, (receive_time, symbol, message) in enumerate(items):
            if self.speed is not None:
                delay = started + (receive_time - first).total_seconds() / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif number % 64 == 0:
                await asyncio.sleep(0)
            with self._cond:
                outgoing = self.replay.step(symbol, message)
                if outgoing and message.kind == "depth" and self._drop_diff(symbol):
                    outgoing = []
                self.replayed += 1
                self._cond.notify_all()
            self._publish(outgoing)
        self.replay_done.set()

    # -- REST --------------------------------------------------------------------------------------

    def _rest_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            # With keep-alive the reply leaves in one write, so Nagle's algorithm never holds it back.
            protocol_version = "HTTP/1.1" if server.keep_alive else "HTTP/1.0"
            disable_nagle_algorithm = True
            wbufsize = 1 << 16

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

            def do_PUT(self) -> None:
                self._dispatch("PUT")

            def log_message(self, *_: object) -> None:
                pass

            def _dispatch(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                with server._lock:
                    server.requests.append((method, parts.path))
                headers: dict[str, str] = {}
                status, payload = server._route(method, parts.path, parts.query, body, self.headers, headers)
                if server.latency:
                    time.sleep(server.latency)  # this connection's thread only: others are answered meanwhile
                if status == _DROP:  # executed, but the client never hears about it
                    self.close_connection = True
                    return
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _spend_weight(self, weight: int, headers: dict[str, str]) -> tuple[int, dict] | None:
        now = time.monotonic()
        with self._lock:
            while self._weights and self._weights[0][0] <= now - self.weight_window:
                self._weights.popleft()
            used = sum(w for _, w in self._weights)
            if used + weight > self.weight_limit:
                self.refused_requests += 1
                wait = self._weights[0][0] + self.weight_window - now if self._weights else self.weight_window
                headers.update({"Retry-After": str(max(1, math.ceil(wait))), "X-MBX-USED-WEIGHT-1M": str(used)})
                return 429, {"code": -1003, "msg": f"Too many requests; current limit of IP is {self.weight_limit} "
                                                   f"request weight per {self.weight_window:g} s."}
            self._weights.append((now, weight))
            self.max_used_weight = max(self.max_used_weight, used + weight)
            headers["X-MBX-USED-WEIGHT-1M"] = str(used + weight)
        return None

    def _route(self, method: str, path: str, query: str, body: str, headers, out_headers: dict[str, str]
               ) -> tuple[int, Any]:
        params = dict(parse_qsl(query)) | dict(parse_qsl(body))
        public = {
            ("GET", "/fapi/v1/ping"): lambda: {},
            ("GET", "/fapi/v1/time"): lambda: {"serverTime": self._server_time()},
            ("GET", "/fapi/v1/exchangeInfo"): self._exchange_info,
            ("GET", "/fapi/v1/depth"): lambda: self._depth(params),
            ("GET", "/fapi/v1/klines"): lambda: self._klines(params),
            ("GET", "/fapi/v1/fundingRate"): lambda: self._funding_rates(params, out_headers),
        }
        signed = {("POST", "/fapi/v1/order"): lambda: self._new_order(params),
                  ("GET", "/fapi/v1/order"): lambda: self._on_account("query_order", params),
                  ("DELETE", "/fapi/v1/order"): lambda: self._on_account("cancel_order", params),
                  ("POST", "/fapi/v1/algoOrder"): lambda: self._new_algo_order(params),
                  ("GET", "/fapi/v1/algoOrder"): lambda: self._on_account("find_algo_order", params),
                  ("DELETE", "/fapi/v1/algoOrder"): lambda: self._on_account("cancel_algo_order", params),
                  ("GET", "/fapi/v1/openAlgoOrders"): lambda: self._on_account("open_algo_orders", params),
                  ("GET", "/fapi/v3/positionRisk"): lambda: self._position_risk(params),
                  ("GET", "/fapi/v1/userTrades"): lambda: self._on_account("user_trades", params),
                  ("GET", "/fapi/v1/forceOrders"): lambda: self._on_account("force_orders", params),
                  ("GET", "/fapi/v1/openOrders"): lambda: self._on_account("open_orders", params),
                  ("GET", "/fapi/v2/balance"): lambda: self._on_account("balance", params),
                  ("GET", "/fapi/v3/balance"): lambda: self._on_account("balance", params),
                  ("POST", "/fapi/v1/leverage"): lambda: self._on_account("set_leverage", params),
                  ("POST", "/fapi/v1/marginType"): lambda: self._on_account("set_margin_type", params),
                  ("GET", "/fapi/v1/positionSide/dual"): lambda: self._on_account("position_mode", params),
                  ("GET", "/fapi/v1/multiAssetsMargin"): lambda: self._on_account("multi_assets_mode", params),
                  ("GET", "/fapi/v1/commissionRate"): lambda: self._on_account("commission_rate", params)}
        keyed = {(verb, "/fapi/v1/listenKey"): lambda verb=verb: self._listen_key(verb, params)
                 for verb in ("POST", "PUT", "DELETE")}  # USER_STREAM: the API key, no signature
        if (method, path) in keyed:
            if headers.get("X-MBX-APIKEY") != self.api_key:
                return 401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}
            try:
                return 200, keyed[(method, path)]()
            except _Refused as refused:
                return refused.status, {"code": refused.code, "msg": refused.message}
        if (method, path) not in public and (method, path) not in signed:
            return 404, {"code": -5000, "msg": f"Path {path}, Method {method} is invalid"}
        if banned := self._banned(out_headers):
            return banned
        if path in self.failing:
            status, code, message = self.failing[path]
            if status in (418, 429):
                out_headers["Retry-After"] = "1"
            return status, {"code": code, "msg": message}
        try:
            refused = self._spend_weight(request_weight(path, params, method), out_headers)
            if refused:
                return refused
            if (method, path) in public:
                return 200, public[(method, path)]()
            refused = self._check_signature(query, body, headers, params)
            if refused:
                return refused
            reply = signed[(method, path)]()
            if method == "POST" and path in ("/fapi/v1/order", "/fapi/v1/algoOrder") and self._take_drop():
                return _DROP, None
            return 200, reply
        except KeyError as missing:
            return 400, {"code": -1102, "msg": f"Mandatory parameter {missing} was not sent."}
        except _Refused as refused:
            return refused.status, {"code": refused.code, "msg": refused.message}

    def ban_for(self, seconds: float) -> None:
        """Answer every request with 418 (IP banned) and Retry-After for `seconds`."""
        self.banned_until = time.monotonic() + seconds

    def _banned(self, headers: dict[str, str]) -> tuple[int, dict] | None:
        left = self.banned_until - time.monotonic()
        if left <= 0:
            return None
        with self._lock:
            self.refused_requests += 1
        headers["Retry-After"] = str(max(1, math.ceil(left)))
        return 418, {"code": -1003, "msg": "Way too many requests; IP banned until further notice."}

    def _server_time(self) -> int:
        return int(time.time() * 1000) + self.time_offset_ms

    def _check_signature(self, query: str, body: str, headers, params: dict) -> tuple[int, dict] | None:
        if headers.get("X-MBX-APIKEY") != self.api_key:
            return 401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}
        total, _, signature = (query + body).rpartition("&signature=")
        expected = hmac.new(self.api_secret.encode(), total.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, expected):
            return 400, {"code": -1022, "msg": "Signature for this request is not valid."}
        timestamp, window = int(params["timestamp"]), int(params.get("recvWindow", 5000))
        now = self._server_time()
        if timestamp > now + 1000 or now - timestamp > window:
            return 400, {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}
        return None

    def _exchange_info(self) -> dict[str, Any]:
        symbols = [{
            "symbol": symbol, "pair": symbol, "contractType": "PERPETUAL", "status": "TRADING",
            "baseAsset": symbol.removesuffix("USDT"), "quoteAsset": "USDT", "marginAsset": "USDT",
            "pricePrecision": 1, "quantityPrecision": 3,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.1", "maxPrice": "1000000", "tickSize": "0.1"},
                {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": f"{LOT_MAX_QTY:g}", "stepSize": "0.001"},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": f"{MARKET_MAX_QTY:g}",
                 "stepSize": "0.001"},
                {"filterType": "MIN_NOTIONAL", "notional": "5"},
            ],
        } for symbol in self.symbols]
        return {"timezone": "UTC", "serverTime": self._server_time(), "symbols": symbols}

    def _depth(self, params: dict) -> dict[str, Any]:
        symbol, limit = params["symbol"], int(params.get("limit", 500))
        if symbol not in self.symbols:
            raise _Refused(400, -1121, "Invalid symbol.")
        if not self.replay:
            with self._lock:
                return self.markets[symbol].snapshot(limit, self.now_ms)
        deadline = time.monotonic() + 30
        with self._cond:  # held until the replay reaches the symbol's recorded snapshot
            while (snapshot := self.replay.snapshot(symbol, limit)) is None:
                if not self._cond.wait(deadline - time.monotonic()) and time.monotonic() >= deadline:
                    raise _Refused(503, -1001, "Internal error; unable to process your request. Please try again.")
        return snapshot

    def _klines(self, params: dict) -> list[list[Any]]:
        symbol, interval = params["symbol"], params["interval"]
        if symbol not in self.symbols:
            raise _Refused(400, -1121, "Invalid symbol.")
        try:
            step = interval_ms(interval)
        except ValueError:
            raise _Refused(400, -1120, "Invalid interval.") from None
        limit = int(params.get("limit", 500))
        if not 1 <= limit <= MAX_KLINES_LIMIT:
            raise _Refused(400, -1130, "Data sent for parameter 'limit' is not valid.")
        start = int(params["startTime"]) if "startTime" in params else None
        end = int(params["endTime"]) if "endTime" in params else None
        with self._lock:
            self.klines_requests.append(dict(params))
            if self.replay:
                live = list(self.replay.state[symbol].bars[interval].closed) if interval in self.intervals else []
            else:
                market = self.markets[symbol]
                bars = market.closed_bars.get(interval, []) + ([market.bars[interval]] if interval in market.bars else [])
                live = [bar.rest_row() for bar in bars]
        history_end = live[0][0] if live else (START_MS if not self.replay else 0)
        rows = []
        if self.history_from_ms is not None:
            first = -(-self.history_from_ms // step) * step
            if start is not None:
                first = max(first, -(-start // step) * step)
            last = min(history_end, end + 1) if end is not None else history_end
            if start is None:  # the newest `limit` bars up to the end
                first = max(first, last - limit * step)
            rows = [_history_bar(symbol, interval, t).rest_row() for t in range(first, last, step)][:limit]
        rows += [row for row in live if (start is None or row[0] >= start) and (end is None or row[0] <= end)]
        return rows[:limit] if start is not None else rows[-limit:]

    def _funding_rates(self, params: dict, out_headers: dict[str, str]) -> list[dict[str, Any]]:
        symbol = params.get("symbol")
        if symbol is not None and symbol not in self.symbols:
            raise _Refused(400, -1121, "Invalid symbol.")
        limit = int(params.get("limit", 100))
        if not 1 <= limit <= MAX_FUNDING_LIMIT:
            raise _Refused(400, -1130, "Data sent for parameter 'limit' is not valid.")
        self._spend_funding_request(out_headers)
        start = int(params["startTime"]) if "startTime" in params else None
        end = min(int(params["endTime"]) if "endTime" in params else self._server_time(), self._server_time())
        if start is None and "endTime" not in params:
            limit = 200  # neither: the most recent 200
        last = end - (end - FUNDING_FROM_MS) % FUNDING_INTERVAL_MS
        if start is None:
            first = max(FUNDING_FROM_MS, last - (limit - 1) * FUNDING_INTERVAL_MS)
        else:
            first = max(FUNDING_FROM_MS, FUNDING_FROM_MS - (-(start - FUNDING_FROM_MS) // FUNDING_INTERVAL_MS)
                        * FUNDING_INTERVAL_MS)
        with self._lock:
            self.funding_requests.append(dict(params))
        times = range(first, last + 1, FUNDING_INTERVAL_MS)[:limit]
        symbols = [symbol] if symbol else list(self.symbols)
        return sorted((funding_event(s, t) for t in times for s in symbols), key=lambda e: e["fundingTime"])[:limit]

    def _spend_funding_request(self, out_headers: dict[str, str]) -> None:
        """Binance's separate limit of the funding endpoints: `funding_limit` requests per 5 minutes."""
        now = time.monotonic()
        with self._lock:
            while self._funding_times and self._funding_times[0] <= now - 300:
                self._funding_times.popleft()
            if len(self._funding_times) >= self.funding_limit:
                self.refused_requests += 1
                out_headers["Retry-After"] = str(max(1, math.ceil(self._funding_times[0] + 300 - now)))
                raise _Refused(429, -1003, f"Too many requests; the funding rate limit is {self.funding_limit} "
                                           "requests per 5 minutes.")
            self._funding_times.append(now)

    def _new_order(self, params: dict) -> dict[str, Any]:
        self._check_symbol(params)
        with self._lock:
            self.orders.append(params)
            return _public(self.account.new_order(params, self._server_time()))

    def _new_algo_order(self, params: dict) -> dict[str, Any]:
        self._check_symbol(params)
        with self._lock:
            self.algo_requests.append(params)
            return _public(self.account.new_algo_order(params, self._server_time()))

    def _on_account(self, method: str, params: dict) -> Any:
        with self._lock:
            return _public(getattr(self.account, method)(params, self._server_time()))

    def _position_risk(self, params: dict) -> list[dict[str, Any]]:
        with self._lock:
            return self.account.position_risk(params, self.symbols)

    def _check_symbol(self, params: dict) -> None:
        if params["symbol"] not in self.symbols:
            raise _Refused(400, -1121, "Invalid symbol.")

    def _take_drop(self) -> bool:
        with self._lock:
            drop, self.account.drop_next_reply = self.account.drop_next_reply, False
        return drop

    def _market_price(self, symbol: str, side: str) -> float:
        """What a MARKET order of `side` pays now: the best ask to buy, the best bid to sell (lock held)."""
        if self.replay:
            book = self.replay.state[symbol].book
            level = book.best_ask() if side == "BUY" else book.best_bid()
            if level is None:
                raise _Refused(400, -2020, "Unable to fill.")
            return level[0]
        market = self.markets[symbol]
        return float(_price(min(market.asks) if side == "BUY" else max(market.bids)))

    # -- the account, driven by tests ----------------------------------------------------------------

    def set_mark_price(self, symbol: str, price: float) -> list[dict[str, Any]]:
        """Move `symbol`'s mark price (MARKET orders then fill there too); conditional orders it crosses
        trigger. Returns the algo orders that fired."""
        with self._lock:
            return [_public(o) for o in self.account.set_mark_price(symbol, price, self._server_time())]

    def position_amount(self, symbol: str) -> float:
        with self._lock:
            position = self.account.positions.get(symbol)
            return position.amount if position else 0.0

    def open_algo_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(o) for o in self.account.open_algo_orders({"symbol": symbol} if symbol else {})]

    def charge_funding(self, symbol: str, amount: float) -> None:
        """A funding fee of `amount` USDT (negative: the account pays) on `symbol`'s position."""
        with self._lock:
            self.account.charge_funding(symbol, amount, self._server_time())

    def liquidate(self, symbol: str, price: float) -> dict[str, Any]:
        """The exchange liquidates `symbol`'s position at `price`; returns the liquidation order."""
        with self._lock:
            return _public(self.account.liquidate(symbol, price, self._server_time()))

    def set_account(self, *, wallet: float | None = None, hedge_mode: bool | None = None,
                    multi_assets: bool | None = None) -> None:
        """The wallet balance (USDT), hedge mode (dualSidePosition) and multi-assets mode of the account."""
        with self._lock:
            if wallet is not None:
                self.account.wallet = wallet
            if hedge_mode is not None:
                self.account.dual_side = hedge_mode
            if multi_assets is not None:
                self.account.multi_assets = multi_assets

    def expire_algo_order(self, symbol: str, order_type: str, status: str = "EXPIRED") -> dict[str, Any]:
        """The exchange ends `symbol`'s open conditional order of `order_type` (EXPIRED or REJECTED), as it
        may on its own; returns it."""
        with self._lock:
            [order] = [o for o in self.account.open_algo_orders({"symbol": symbol}) if o["orderType"] == order_type]
            order.update(algoStatus=status, updateTime=self._server_time())
            self.account._algo_event(order, self._server_time())
            return _public(dict(order))

    def reject_next_order(self, symbol: str, code: int = -2019, message: str = "Margin is insufficient.") -> None:
        with self._lock:
            self.account.reject_next[symbol] = (code, message)

    def drop_next_reply(self) -> None:
        """The next order (POST /fapi/v1/order or /algoOrder) is executed, then the connection is dropped
        without a reply."""
        with self._lock:
            self.account.drop_next_reply = True

    def fill_after_queries(self, queries: int) -> None:
        """MARKET orders are answered NEW and fill only after `queries` lookups (0: at once)."""
        with self._lock:
            self.account.fill_after_queries = queries


_DROP = -1  # a _route status: close the connection without replying


def _public(reply: Any) -> Any:
    """A reply without the server's private fields (names starting with '_')."""
    if isinstance(reply, list):
        return [_public(item) for item in reply]
    if isinstance(reply, dict):
        return {k: v for k, v in reply.items() if not k.startswith("_")}
    return reply


class _Refused(Exception):
    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m winiswin_pipelines_tests.binance_server",
        description="A local Binance USDT-M server (REST + websocket) simulating a market or replaying captures.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="REST port (default 8090)")
    parser.add_argument("--ws-port", type=int, help="websocket port (default: --port + 1)")
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="capture files to replay (one symbol each; a "
                        "symbol's files are chained in time order); without: a simulated market")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="replay speed, times real time (default 1; 0: as fast as the client takes it)")
    parser.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="simulated symbols (default BTCUSDT,ETHUSDT)")
    args = parser.parse_args(argv)
    server = LocalBinanceServer(
        tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()), replay=args.replay,
        speed=args.speed or None, host=args.host, port=args.port,
        ws_port=args.ws_port if args.ws_port is not None else args.port + 1,
    ).start()
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    if server.replay:
        what = (f"replaying {len(server.replay.items):,} messages of {', '.join(server.symbols)} at "
                f"{'full speed' if server.speed is None else f'{server.speed:g}x'} once a client connects")
    else:
        what = f"simulating {', '.join(server.symbols)}"
    print(f"local Binance USDT-M server: REST {server.rest_url}  websocket {server.ws_url}  ({what}); Ctrl-C stops it",
          flush=True)
    while not done.wait(0.5):
        if server.replay and server.replay_done.is_set():
            print(f"replay finished ({server.replayed:,} messages); still serving", flush=True)
            server.replay_done.clear()
    server.stop()
    print("stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
