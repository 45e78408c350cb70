"""Binance USDT-M futures protocol: REST (public and signed) and the combined websocket streams.

`BinanceRestClient` speaks REST through httpx: klines (warm-up and backfill), depth snapshots,
exchangeInfo, and signed requests (HMAC-SHA256 over the query string, `timestamp` from the
server-synchronised clock, `recvWindow`): orders (`/fapi/v1/order`: new, query, cancel, each by
client order id), conditional orders through the Algo Order API (`/fapi/v1/algoOrder`: new, query,
cancel by `clientAlgoId`; `/fapi/v1/openAlgoOrders`), the account's state (`/fapi/v3/positionRisk`,
`/fapi/v1/openOrders`, `/fapi/v3/balance`), its fills and liquidations (`/fapi/v1/userTrades`,
`/fapi/v1/forceOrders`), its settings (`/fapi/v1/leverage`, `/fapi/v1/marginType`,
`/fapi/v1/positionSide/dual`, `/fapi/v1/multiAssetsMargin`, `/fapi/v1/commissionRate`), the
user-data stream's listenKey (`/fapi/v1/listenKey`, sent with the API key but unsigned) and the
funding-rate history (`/fapi/v1/fundingRate`, public; it has its own limit of 500 requests per 5
minutes per IP, shared with `/fapi/v1/fundingInfo`, of which this client allows itself half).
Every request first takes its request weight from a `RateWindow` (by default 1,200 a minute: half
of Binance's 2,400 per IP), backs off when Binance reports the IP's used weight
(`X-MBX-USED-WEIGHT-1M`) above that budget, and after a 429 or a 418 (IP ban) holds every request
until `Retry-After` has passed; a GET is then tried again, an order is not (the caller decides,
looking it up by its client id). Errors raise `BinanceAPIError` with Binance's code and message,
never the key, secret or signature; `unknown_outcome` tells a request that may have been executed
(no reply, a dropped connection, a 5xx or -1007) from one Binance refused.

`BinanceStream` is the one implementation of the live streams, used by the market-data capture and
by `BinanceFeed` (trading sessions) alike. It reads `/stream?streams=...` with `websockets`,
sharded over as many connections as needed (streams of a symbol stay on one connection; at most
`streams_per_connection`, 200 by default, well under Binance's 1,024), opens connections no faster
than `CONNECTIONS_PER_5_MINUTES` (Binance allows 300 per 5 minutes per IP) and sends nothing but
pings (Binance allows 10 incoming messages a second). It reconnects with back-off, and keeps one
`LiveBook` per symbol: Binance's futures book rules through the import's `BookSnapshotter`, a REST
snapshot fetched whenever a book is out of sync (rate-limited like every request), and the gaps.
No book update is reported while a book is out of sync, so nobody trades on a stale book.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from winiswin_pipelines.marketdata.capture import stream_kind
from winiswin_pipelines.marketdata.klines import interval_ms
from winiswin_pipelines.marketdata.livebook import LiveBook, ResumePoint, SyncState
from winiswin_pipelines.marketdata.orderbook import OrderBook
from winiswin_pipelines.times import EPOCH

log = logging.getLogger(__name__)

BINANCE_FUTURES_REST = "https://fapi.binance.com"
BINANCE_FUTURES_WS = "wss://fstream.binance.com"
DEFAULT_RECV_WINDOW_MS = 5_000
KLINES_PAGE = 1_500  # the most /fapi/v1/klines returns per request
SMALL_KLINES_PAGE = 99  # the largest page of request weight 1
_TIMESTAMP_OUTSIDE_WINDOW = -1021

# Binance's limits (USDT-M futures) and the share of them this client allows itself.
BINANCE_WEIGHT_PER_MINUTE = 2_400  # REQUEST_WEIGHT per IP
DEFAULT_WEIGHT_PER_MINUTE = 1_200
MAX_STREAMS_PER_CONNECTION = 1_024
DEFAULT_STREAMS_PER_CONNECTION = 200
CONNECTIONS_PER_5_MINUTES = 60  # Binance allows 300 per IP
FUNDING_REQUESTS_PER_5_MINUTES = 250  # Binance allows 500 per IP (fundingRate and fundingInfo together)
FUNDING_PAGE = 1_000  # the most /fapi/v1/fundingRate returns per request
_FUNDING_PATHS = ("/fapi/v1/fundingRate", "/fapi/v1/fundingInfo")
_RETRIES_ON_429 = 3


_BACKEND_TIMEOUT = -1007  # "execution status unknown"
ORDER_DOES_NOT_EXIST = -2013


class BinanceAPIError(RuntimeError):
    """Binance refused a request: HTTP status (0: no reply), Binance error code and message, method and path."""

    def __init__(self, status: int, code: int | None, message: str, method: str, path: str):
        super().__init__(f"Binance {method} {path} failed: HTTP {status}, code {code}: {message}")
        self.status, self.code, self.message = status, code, message

    @property
    def unknown_outcome(self) -> bool:
        """The request may have been executed: no reply, a server error, or Binance's own 'status unknown'."""
        return self.status == 0 or self.status >= 500 or self.code == _BACKEND_TIMEOUT

    @property
    def not_found(self) -> bool:
        return self.code == ORDER_DOES_NOT_EXIST


class RateWindow:
    """At most `limit` units (request weight, connections) in any `seconds`-long window; `acquire`
    waits until the units fit. `pause_until` holds every caller until a (monotonic) time."""

    def __init__(self, limit: float, seconds: float, *, clock: Callable[[], float] = time.monotonic):
        if limit <= 0 or seconds <= 0:
            raise ValueError(f"a rate window needs a positive limit and length, got {limit} per {seconds} s")
        self.limit, self.seconds, self._clock = limit, seconds, clock
        self._spent: deque[tuple[float, float]] = deque()
        self._total = 0.0
        self._paused_until = 0.0
        self.waited = 0.0  # seconds callers spent waiting, in total

    def used(self) -> float:
        self._expire(self._clock())
        return self._total

    def pause_until(self, when: float) -> None:
        self._paused_until = max(self._paused_until, when)

    async def acquire(self, amount: float = 1.0) -> None:
        if amount > self.limit:
            raise ValueError(f"{amount} units can never fit in a window of {self.limit}")
        while True:
            now = self._clock()
            if now < self._paused_until:
                wait = self._paused_until - now
            else:
                self._expire(now)
                if self._total + amount <= self.limit:
                    self._spent.append((now, amount))
                    self._total += amount
                    return
                wait = self._spent[0][0] + self.seconds - now
            self.waited += wait
            await asyncio.sleep(max(wait, 0.001))

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - self.seconds:
            self._total -= self._spent.popleft()[1]


def request_weight(path: str, params: Mapping[str, Any] | None = None, method: str = "GET") -> int:
    """Binance's request weight of a USDT-M futures REST request (the endpoints this client calls)."""
    params = params or {}
    if path == "/fapi/v1/algoOrder" and method == "POST":
        return 0  # "0 on IP rate limit": new algo orders count against the order limits only
    if path in ("/fapi/v1/openAlgoOrders", "/fapi/v1/openOrders"):
        return 1 if params.get("symbol") else 40
    if path == "/fapi/v1/forceOrders":
        return 20 if params.get("symbol") else 50
    if path in ("/fapi/v1/positionSide/dual", "/fapi/v1/multiAssetsMargin"):
        return 30
    if path == "/fapi/v1/commissionRate":
        return 20
    if path in ("/fapi/v3/positionRisk", "/fapi/v1/userTrades", "/fapi/v3/balance", "/fapi/v3/account"):
        return 5
    if path == "/fapi/v1/depth":
        limit = int(params.get("limit", 500))
        return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
    if path == "/fapi/v1/klines":
        limit = int(params.get("limit", 500))
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
    if path == "/fapi/v2/balance":
        return 5
    return 1


class BinanceRestClient:
    """Async REST client of Binance USDT-M futures (use `async with`, or `await close()`)."""

    def __init__(self, base_url: str = BINANCE_FUTURES_REST, api_key: str | None = None,
                 api_secret: str | None = None, *, recv_window_ms: int = DEFAULT_RECV_WINDOW_MS,
                 timeout: float = 10.0, weight_limiter: RateWindow | None = None):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._api_secret = api_secret
        self.recv_window_ms = recv_window_ms
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._clock_offset_ms: int | None = None  # server time minus local time
        self.weights = weight_limiter or RateWindow(DEFAULT_WEIGHT_PER_MINUTE, 60.0)
        self.funding_requests = RateWindow(FUNDING_REQUESTS_PER_5_MINUTES, 300.0)  # their own limit
        self.used_weight: int | None = None  # the IP's weight in the current minute, as Binance last said
        self.requests_sent = 0

    def __repr__(self) -> str:  # no key material, ever
        return f"BinanceRestClient({self.base_url!r}, signed={self.can_sign})"

    @property
    def can_sign(self) -> bool:
        return bool(self._api_key and self._api_secret)

    async def __aenter__(self) -> BinanceRestClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- public endpoints --------------------------------------------------------------------------

    async def server_time(self) -> int:
        """Binance's clock in epoch milliseconds."""
        return int((await self._request("GET", "/fapi/v1/time"))["serverTime"])

    async def exchange_info(self) -> dict[str, Any]:
        """Symbols, their status and their filters (tick size, step size, minimum notional)."""
        return await self._request("GET", "/fapi/v1/exchangeInfo")

    async def depth(self, symbol: str, limit: int = 1000) -> dict[str, Any]:
        """A depth snapshot: `lastUpdateId`, `bids` and `asks` as [price, quantity] strings."""
        return await self._request("GET", "/fapi/v1/depth", {"symbol": symbol, "limit": limit})

    async def klines(self, symbol: str, interval: str, *, start_time: int | None = None,
                     end_time: int | None = None, limit: int = 500) -> list[list[Any]]:
        """Raw kline rows (Binance's 12-field arrays), oldest first; the last may still be open."""
        params = {"symbol": symbol, "interval": interval, "limit": limit, "startTime": start_time, "endTime": end_time}
        return await self._request("GET", "/fapi/v1/klines", {k: v for k, v in params.items() if v is not None})

    async def closed_klines_since(self, symbol: str, interval: str, start_time: int, *,
                                  page: int = KLINES_PAGE) -> list[list[Any]]:
        """Every closed kline opening at or after `start_time` (paged), without the open bar.

        Binance always lists the bar in progress last; a page shorter than the limit therefore ends
        with it, so it is dropped there (this needs no clock agreement with the exchange). A small
        `page` costs less weight when only a few bars are missing (99: weight 1 a page).
        """
        step, rows = interval_ms(interval), []
        while True:
            chunk = await self.klines(symbol, interval, start_time=start_time, limit=page)
            if len(chunk) < page:
                return rows + chunk[:-1]
            rows += chunk
            start_time = int(chunk[-1][0]) + step

    async def klines_between(self, symbol: str, interval: str, start_time: int, end_time: int, *,
                             page: int = KLINES_PAGE) -> list[list[Any]]:
        """The klines opening in [start_time, end_time) (epoch ms), oldest first, `page` per request
        (each request takes its weight from the limiter first: 10 for a page of 1,500)."""
        step, rows = interval_ms(interval), []
        while start_time < end_time:
            chunk = await self.klines(symbol, interval, start_time=start_time, end_time=end_time - 1, limit=page)
            rows += [row for row in chunk if start_time <= int(row[0]) < end_time]
            if len(chunk) < page:
                break
            start_time = int(chunk[-1][0]) + step
        return rows

    async def funding_rates(self, symbol: str, *, start_time: int | None = None, end_time: int | None = None,
                            limit: int = FUNDING_PAGE) -> list[dict[str, Any]]:
        """GET /fapi/v1/fundingRate: `symbol`'s funding events in [start_time, end_time] (epoch ms, both
        inclusive), oldest first, at most `limit` (1,000) from `start_time` on; each has `fundingTime`,
        `fundingRate` and `markPrice` (the mark price the fee was charged at; empty in old records)."""
        params = {"symbol": symbol, "startTime": start_time, "endTime": end_time, "limit": limit}
        return await self._request("GET", "/fapi/v1/fundingRate", {k: v for k, v in params.items() if v is not None})

    # -- signed endpoints --------------------------------------------------------------------------

    async def signed_request(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        """A request signed with HMAC-SHA256 as Binance requires; re-syncs the clock once on -1021."""
        if not self.can_sign:
            raise PermissionError(f"{method} {path} needs a Binance API key and secret; none were given")
        if self._clock_offset_ms is None:
            await self.sync_clock()
        try:
            return await self._request(method, path, params, signed=True)
        except BinanceAPIError as error:
            if error.code != _TIMESTAMP_OUTSIDE_WINDOW:
                raise
            await self.sync_clock()
            return await self._request(method, path, params, signed=True)

    async def new_order(self, symbol: str, side: str, order_type: str, *, quantity: float | str | None = None,
                        price: float | str | None = None, time_in_force: str | None = None,
                        reduce_only: bool | None = None, client_order_id: str | None = None,
                        **extra: Any) -> dict[str, Any]:
        """POST /fapi/v1/order. Quantities and prices must already respect the symbol's filters."""
        params = {
            "symbol": symbol, "side": side, "type": order_type, "quantity": quantity, "price": price,
            "timeInForce": time_in_force, "newClientOrderId": client_order_id,
            "reduceOnly": None if reduce_only is None else str(reduce_only).lower(), **extra,
        }
        return await self.signed_request("POST", "/fapi/v1/order", {k: v for k, v in params.items() if v is not None})

    async def query_order(self, symbol: str, client_order_id: str | None = None, *,
                          order_id: int | str | None = None) -> dict[str, Any]:
        """GET /fapi/v1/order by `origClientOrderId` or `orderId` (raises with `not_found` when Binance has no
        such order)."""
        return await self.signed_request("GET", "/fapi/v1/order", _order_key(symbol, client_order_id, order_id))

    async def cancel_order(self, symbol: str, client_order_id: str) -> dict[str, Any]:
        """DELETE /fapi/v1/order by `origClientOrderId`."""
        return await self.signed_request("DELETE", "/fapi/v1/order", _order_key(symbol, client_order_id, None))

    async def new_algo_order(self, symbol: str, side: str, order_type: str, *, trigger_price: str,
                             client_algo_id: str, close_position: bool = True, quantity: str | None = None,
                             working_type: str = "MARK_PRICE") -> dict[str, Any]:
        """POST /fapi/v1/algoOrder: a CONDITIONAL order (STOP_MARKET, TAKE_PROFIT_MARKET, ...) closing the
        whole position (`closePosition`) or, with `quantity`, reduce-only."""
        params = {"algoType": "CONDITIONAL", "symbol": symbol, "side": side, "type": order_type,
                  "triggerPrice": trigger_price, "workingType": working_type, "clientAlgoId": client_algo_id}
        if close_position:
            params["closePosition"] = "true"
        else:
            params |= {"quantity": quantity, "reduceOnly": "true"}
        return await self.signed_request("POST", "/fapi/v1/algoOrder", params)

    async def query_algo_order(self, client_algo_id: str) -> dict[str, Any]:
        """GET /fapi/v1/algoOrder by `clientAlgoId`."""
        return await self.signed_request("GET", "/fapi/v1/algoOrder", {"clientAlgoId": client_algo_id})

    async def cancel_algo_order(self, client_algo_id: str | None = None, *,
                                algo_id: int | None = None) -> dict[str, Any]:
        """DELETE /fapi/v1/algoOrder by `clientAlgoId` or `algoId`."""
        key = {"algoId": algo_id} if algo_id is not None else {"clientAlgoId": client_algo_id}
        return await self.signed_request("DELETE", "/fapi/v1/algoOrder", key)

    async def open_algo_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """GET /fapi/v1/openAlgoOrders (weight 1 for a symbol, 40 for all)."""
        return await self.signed_request("GET", "/fapi/v1/openAlgoOrders", {"symbol": symbol} if symbol else {})

    async def position_risk(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """GET /fapi/v3/positionRisk: the account's positions (`positionAmt` signed, `entryPrice`, `markPrice`)."""
        return await self.signed_request("GET", "/fapi/v3/positionRisk", {"symbol": symbol} if symbol else {})

    async def user_trades(self, symbol: str, *, order_id: int | str | None = None, start_time: int | None = None,
                          limit: int = 1000) -> list[dict[str, Any]]:
        """GET /fapi/v1/userTrades: the account's fills of `symbol` (price, qty, commission, realizedPnl, orderId),
        oldest first; by `orderId`, or from `startTime` (Binance answers at most 7 days)."""
        params = {"symbol": symbol, "orderId": order_id, "startTime": start_time, "limit": limit}
        return await self.signed_request("GET", "/fapi/v1/userTrades", {k: v for k, v in params.items() if v is not None})

    async def force_orders(self, symbol: str | None = None, *, start_time: int | None = None,
                           auto_close_type: str = "LIQUIDATION") -> list[dict[str, Any]]:
        """GET /fapi/v1/forceOrders: the account's liquidation (or ADL) orders."""
        params = {"symbol": symbol, "startTime": start_time, "autoCloseType": auto_close_type}
        return await self.signed_request("GET", "/fapi/v1/forceOrders", {k: v for k, v in params.items() if v is not None})

    async def open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """GET /fapi/v1/openOrders (weight 1 for a symbol, 40 for all)."""
        return await self.signed_request("GET", "/fapi/v1/openOrders", {"symbol": symbol} if symbol else {})

    async def balance(self) -> list[dict[str, Any]]:
        """GET /fapi/v3/balance: per asset `balance` (wallet), `availableBalance`, `crossUnPnl`."""
        return await self.signed_request("GET", "/fapi/v3/balance")

    async def set_leverage(self, symbol: str, leverage: int) -> dict[str, Any]:
        """POST /fapi/v1/leverage."""
        return await self.signed_request("POST", "/fapi/v1/leverage", {"symbol": symbol, "leverage": leverage})

    async def set_margin_type(self, symbol: str, margin_type: str) -> dict[str, Any]:
        """POST /fapi/v1/marginType (ISOLATED or CROSSED); Binance answers -4046 when it is already so."""
        return await self.signed_request("POST", "/fapi/v1/marginType", {"symbol": symbol, "marginType": margin_type})

    async def hedge_mode(self) -> bool:
        """GET /fapi/v1/positionSide/dual: whether the account is in hedge mode (`dualSidePosition`)."""
        return bool((await self.signed_request("GET", "/fapi/v1/positionSide/dual"))["dualSidePosition"])

    async def multi_assets_mode(self) -> bool:
        """GET /fapi/v1/multiAssetsMargin: whether the account is in multi-assets mode."""
        return bool((await self.signed_request("GET", "/fapi/v1/multiAssetsMargin"))["multiAssetsMargin"])

    async def commission_rate(self, symbol: str) -> dict[str, Any]:
        """GET /fapi/v1/commissionRate: the account's `makerCommissionRate` and `takerCommissionRate`."""
        return await self.signed_request("GET", "/fapi/v1/commissionRate", {"symbol": symbol})

    async def new_listen_key(self) -> str:
        """POST /fapi/v1/listenKey: the user-data stream's key (the active one, extended, if there is one).
        It is a secret of the account: never log it."""
        return (await self._request("POST", "/fapi/v1/listenKey", keyed=True))["listenKey"]

    async def keep_listen_key_alive(self) -> None:
        """PUT /fapi/v1/listenKey: 60 more minutes (-1125 when the key does not exist any more)."""
        await self._request("PUT", "/fapi/v1/listenKey", keyed=True)

    async def sync_clock(self) -> None:
        """Measure the offset between Binance's clock and ours (half the round trip corrected)."""
        before = time.time() * 1000
        server = await self.server_time()
        after = time.time() * 1000
        self._clock_offset_ms = int(server - (before + after) / 2)

    # -- transport ---------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, params: dict[str, Any] | None = None, *,
                       signed: bool = False, keyed: bool = False) -> Any:
        for attempt in range(_RETRIES_ON_429 + 1):
            if path in _FUNDING_PATHS:
                await self.funding_requests.acquire()
            await self.weights.acquire(request_weight(path, params, method))
            self.requests_sent += 1
            response = await self._send(method, path, params, signed, keyed)
            self._note_used_weight(response)
            if response.status_code in (418, 429):
                # 429: over the limit; 418: the IP is banned for having gone on after 429s. Nobody
                # sends anything until Binance's Retry-After has passed.
                retry_after = _retry_after(response)
                log.warning("Binance %s %s: HTTP %d; holding every request %.0f s as asked", method, path,
                            response.status_code, retry_after)
                self.weights.pause_until(time.monotonic() + retry_after)
                if response.status_code == 429 and method == "GET" and attempt < _RETRIES_ON_429:
                    continue
            break
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = body.get("code"), body.get("msg", response.text)
            except ValueError:
                code, message = None, response.text[:200]
            if response.status_code in (418, 429):
                message = f"{message} (retry after {_retry_after(response):.0f} s)"
            raise BinanceAPIError(response.status_code, code, message, method, path)
        return response.json()

    async def _send(self, method: str, path: str, params: dict[str, Any] | None, signed: bool,
                    keyed: bool = False) -> httpx.Response:
        query = urlencode([(key, _param_text(value)) for key, value in (params or {}).items()])
        headers = {"X-MBX-APIKEY": self._api_key} if keyed else {}
        if signed:
            timestamp = int(time.time() * 1000) + (self._clock_offset_ms or 0)
            query = "&".join(filter(None, [query, f"recvWindow={self.recv_window_ms}", f"timestamp={timestamp}"]))
            signature = hmac.new(self._api_secret.encode(), query.encode(), hashlib.sha256).hexdigest()
            query = f"{query}&signature={signature}"
            headers["X-MBX-APIKEY"] = self._api_key
        url = f"{path}?{query}" if query else path
        try:
            return await self._http.request(method, url, headers=headers)
        except httpx.HTTPError as error:
            detail = type(error).__name__ if signed else f"{type(error).__name__}: {error}"  # URL holds the signature
            raise BinanceAPIError(0, None, detail, method, path) from None

    def _note_used_weight(self, response: httpx.Response) -> None:
        used = response.headers.get("X-MBX-USED-WEIGHT-1M")
        if used is None or not used.isdigit():
            return
        self.used_weight = int(used)
        if self.used_weight > self.weights.limit:
            # Others on this IP spend weight too: stay away until a window of ours has passed.
            log.warning("Binance reports %d request weight used this minute (budget %d); pausing requests",
                        self.used_weight, self.weights.limit)
            self.weights.pause_until(time.monotonic() + self.weights.seconds)


def _order_key(symbol: str, client_order_id: str | None, order_id: int | str | None) -> dict[str, Any]:
    if (client_order_id is None) == (order_id is None):
        raise ValueError("an order is named by exactly one of its client order id and its order id")
    return {"symbol": symbol, **({"orderId": order_id} if order_id is not None else
                                 {"origClientOrderId": client_order_id})}


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return max(float(value), 1.0)
    except ValueError:
        return 60.0


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "f").rstrip("0").rstrip(".") or "0"
    return str(value)


# -- the live streams ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StreamUpdate:
    """One thing the stream reports: a raw `kline`, `bookTicker`, `trade`, ... event; a `book` update
    (the symbol's book is in sync and moved; `book` is live, read it at once); `disconnected` and
    `reconnected` (data: the connection and its symbols); `tick` (about once a second, so a consumer
    can keep time while the market is quiet)."""

    kind: str
    symbol: str | None
    data: dict[str, Any]
    receive_time: dt.datetime
    book: OrderBook | None = None


@dataclass
class StreamStats:
    messages: int = 0
    connections: int = 0  # connections opened (shards x their reconnects)
    reconnects: int = 0
    snapshots: int = 0  # REST snapshots applied
    gaps: dict[str, int] = field(default_factory=dict)  # diffs that broke a book's sequence, per symbol


def shard_streams(streams: Sequence[str], per_connection: int) -> list[list[str]]:
    """`streams` split into connections of at most `per_connection`, a symbol's streams together."""
    if not 1 <= per_connection <= MAX_STREAMS_PER_CONNECTION:
        raise ValueError(f"streams per connection must be 1..{MAX_STREAMS_PER_CONNECTION}, got {per_connection}")
    by_symbol: dict[str, list[str]] = {}
    for name in streams:
        symbol, at, _ = name.partition("@")
        if not at or not symbol or symbol != symbol.lower():
            raise ValueError(f"stream names are '<lower-case symbol>@<stream>', got {name!r}")
        by_symbol.setdefault(name.split("@")[0], []).append(name)
    shards: list[list[str]] = [[]]
    for symbol, names in by_symbol.items():
        if len(names) > per_connection:
            raise ValueError(f"{symbol} alone has {len(names)} streams, more than {per_connection} per connection")
        if len(shards[-1]) + len(names) > per_connection:
            shards.append([])
        shards[-1] += names
    return [shard for shard in shards if shard]


_MESSAGE, _SNAPSHOT, _CONNECTED, _DISCONNECTED, _TICK = range(5)
_NOTHING: tuple[StreamUpdate, ...] = ()
RawListener = Callable[[str, int, "str | bytes"], None]  # (symbol, receive time in µs, the message as received)


def now_us() -> int:
    return time.time_ns() // 1000


def utc_from_us(micros: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=micros)


class BinanceStream:
    """The combined streams of `streams` over sharded connections, with reconnects and per-symbol books.

    `on_message(symbol, receive_us, raw)` sees every message of a symbol exactly as received, and
    every REST snapshot (as JSON) where it is applied to the book: in the order the books take them,
    which is what a capture file must hold to rebuild the same books. `book_updates=False` reports
    no `book` update per diff (the capture reads the books' rows instead). `message_limit` ends
    `updates()` after that many websocket messages.
    """

    def __init__(self, ws_url: str, streams: Sequence[str], rest: BinanceRestClient, *,
                 snapshot_limit: int = 1000, backoff: tuple[float, float] = (0.1, 10.0),
                 streams_per_connection: int = DEFAULT_STREAMS_PER_CONNECTION,
                 connection_limiter: RateWindow | None = None, book_cadence: dt.timedelta = dt.timedelta(seconds=1),
                 book_depth: int = 10, book_source: str | None = None,
                 resume: Mapping[str, ResumePoint] | None = None, book_updates: bool = True,
                 on_message: RawListener | None = None, message_limit: int | None = None,
                 tick_seconds: float = 1.0, max_snapshot_requests: int = 4, queue_size: int = 100_000):
        self.ws_url = ws_url.rstrip("/")
        self.shards = shard_streams(list(streams), streams_per_connection)
        self.urls = [f"{self.ws_url}/stream?streams={'/'.join(shard)}" for shard in self.shards]
        self.shard_symbols = [sorted({name.split("@")[0].upper() for name in shard}) for shard in self.shards]
        self.url = self.urls[0]
        self.rest = rest
        self.snapshot_limit = snapshot_limit
        self.backoff = backoff
        self.connection_limiter = connection_limiter or RateWindow(CONNECTIONS_PER_5_MINUTES, 300.0)
        self.book_updates, self.on_message, self.message_limit = book_updates, on_message, message_limit
        self.tick_seconds, self.queue_size = tick_seconds, queue_size
        resume = resume or {}
        depth_symbols = sorted({name.split("@")[0].upper() for name in streams if stream_kind(name) == "depth"})
        self.books: dict[str, LiveBook] = {
            symbol: LiveBook(symbol, cadence=book_cadence, depth=book_depth, source=book_source,
                             resume=resume.get(symbol))
            for symbol in depth_symbols
        }
        self.messages = 0
        self.last_receive_us: int | None = None
        self._connections = self._reconnects = self._snapshots = 0
        self._connected_once: set[int] = set()
        self._routes: dict[str, tuple[str, str]] = {}
        self._snapshot_tasks: dict[str, asyncio.Task] = {}
        self._snapshot_slots = asyncio.Semaphore(max_snapshot_requests)
        self._queue: asyncio.Queue | None = None

    @property
    def stats(self) -> StreamStats:
        return StreamStats(self.messages, self._connections, self._reconnects, self._snapshots,
                           {s: b.sequence_breaks for s, b in self.books.items() if b.sequence_breaks})

    async def updates(self) -> AsyncIterator[StreamUpdate]:
        """Updates until `message_limit` (forever without one); reconnects on any connection failure."""
        self._queue = asyncio.Queue(self.queue_size)
        tasks = [asyncio.create_task(self._run_connection(index)) for index in range(len(self.urls))]
        tasks.append(asyncio.create_task(self._tick()))
        try:
            while self.message_limit is None or self.messages < self.message_limit:
                item = await self._queue.get()
                kind = item[0]
                if kind == _MESSAGE:
                    updates = self.handle_message(item[1], item[2])
                elif kind == _SNAPSHOT:
                    updates = self._on_snapshot(*item[1:])
                elif kind == _TICK:
                    self._request_snapshots()
                    updates = (StreamUpdate("tick", None, {}, utc_from_us(now_us())),)
                else:
                    updates = self._on_connection_event(item)
                for update in updates:
                    yield update
        finally:
            pending = [*tasks, *self._snapshot_tasks.values()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._snapshot_tasks.clear()

    # -- messages -----------------------------------------------------------------------------------

    def handle_message(self, receive_us: int, raw: str | bytes) -> tuple[StreamUpdate, ...] | list[StreamUpdate]:
        """Take one websocket message received at `receive_us` (µs since the epoch)."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("Binance stream: skipping a message that is not JSON: %.120r", raw)
            return _NOTHING
        stream = message.get("stream") if type(message) is dict else None
        data = message.get("data") if stream is not None else None
        if type(data) is not dict:
            return _NOTHING  # e.g. a reply to a SUBSCRIBE request
        route = self._routes.get(stream) or self._route(stream)
        kind, symbol = route
        self.messages += 1
        self.last_receive_us = receive_us
        if self.on_message is not None:
            self.on_message(symbol, receive_us, raw)
        receive_time = utc_from_us(receive_us)
        if kind == "depth":
            book = self.books.get(symbol)
            if book is None:
                return _NOTHING
            applied = book.on_diff(stream, data, receive_time)
            if book.state is SyncState.WAITING:
                self._request_snapshot(symbol, book)
            if applied and self.book_updates:
                return (StreamUpdate("book", symbol, data, receive_time, book.book),)
            return _NOTHING
        return (StreamUpdate(kind, symbol, data, receive_time),)

    def _route(self, stream: str) -> tuple[str, str]:
        route = (stream_kind(stream).split("_")[0], stream.split("@")[0].upper())
        self._routes[stream] = route
        return route

    def apply_snapshot(self, symbol: str, receive_us: int, snapshot: dict[str, Any]) -> dict[str, Any] | None:
        """Apply a REST snapshot of `symbol` received at `receive_us`; returns the diff the book got in
        sync at, if it did. (What `updates()` does with a snapshot it fetched.)"""
        book = self.books[symbol]
        if book.is_synced:
            return None  # the book got ahead meanwhile: the snapshot would be ignored anyway
        if self.on_message is not None:
            self.on_message(symbol, receive_us, orjson.dumps(snapshot))
        self._snapshots += 1
        return book.on_snapshot(snapshot, utc_from_us(receive_us))

    def _on_snapshot(self, symbol: str, receive_us: int, snapshot: dict[str, Any] | None,
                     error: BaseException | None) -> tuple[StreamUpdate, ...]:
        self._snapshot_tasks.pop(symbol, None)
        book = self.books[symbol]
        if error is not None:
            log.warning("%s depth snapshot failed: %s; asking again later", symbol, error)
            book.snapshot_failed(time.monotonic())
            return _NOTHING
        synced_at = self.apply_snapshot(symbol, receive_us, snapshot)
        if book.state is SyncState.WAITING:
            log.warning("%s depth snapshot %s does not bridge the diffs received; asking again later", symbol,
                        snapshot.get("lastUpdateId"))
        if synced_at is not None and self.book_updates:
            return (StreamUpdate("book", symbol, synced_at, utc_from_us(receive_us), book.book),)
        return _NOTHING

    def _request_snapshots(self) -> None:
        for symbol, book in self.books.items():
            if book.state is SyncState.WAITING and book.first_seen_ms is not None:
                self._request_snapshot(symbol, book)

    def _request_snapshot(self, symbol: str, book: LiveBook) -> None:
        if symbol in self._snapshot_tasks or not book.wants_snapshot(time.monotonic()):
            return
        book.snapshot_requested()
        self._snapshot_tasks[symbol] = asyncio.create_task(self._fetch_snapshot(symbol))

    async def _fetch_snapshot(self, symbol: str) -> None:
        async with self._snapshot_slots:
            try:
                snapshot, error = await self.rest.depth(symbol, self.snapshot_limit), None
            except (BinanceAPIError, ValueError) as failure:
                snapshot, error = None, failure
        await self._queue.put((_SNAPSHOT, symbol, now_us(), snapshot, error))

    # -- connections --------------------------------------------------------------------------------

    def _on_connection_event(self, item: tuple) -> tuple[StreamUpdate, ...]:
        kind, index = item[0], item[1]
        symbols = self.shard_symbols[index]
        data = {"connection": index, "symbols": symbols}
        if kind == _CONNECTED:
            self._connections += 1
            if index in self._connected_once:
                self._reconnects += 1
                return (StreamUpdate("reconnected", None, data, utc_from_us(now_us())),)
            self._connected_once.add(index)
            return _NOTHING
        for symbol in symbols:
            if symbol in self.books:
                self.books[symbol].on_disconnect()
        return (StreamUpdate("disconnected", None, {**data, "reason": item[2]}, utc_from_us(now_us())),)

    async def _run_connection(self, index: int) -> None:
        url, queue = self.urls[index], self._queue
        pause = self.backoff[0]
        while True:
            await self.connection_limiter.acquire()
            connected = False
            try:
                async with connect(url, max_size=2**23, open_timeout=10, ping_interval=20, ping_timeout=20) as ws:
                    connected = True
                    await queue.put((_CONNECTED, index))
                    pause = self.backoff[0]
                    async for raw in ws:
                        item = (_MESSAGE, time.time_ns() // 1000, raw)
                        try:
                            queue.put_nowait(item)
                        except asyncio.QueueFull:
                            await queue.put(item)
                reason = "closed by the server"
            except (OSError, TimeoutError, WebSocketException) as error:
                reason = f"{type(error).__name__}: {error}"
            if connected:
                await queue.put((_DISCONNECTED, index, reason))
                log.warning("Binance stream connection %d lost (%s); reconnecting in %.1fs", index, reason, pause)
            else:
                log.warning("Binance stream connection %d could not open (%s); retrying in %.1fs", index, reason,
                            pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.backoff[1])

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            await self._queue.put((_TICK,))


def snapshot_weight(limit: int) -> int:
    return request_weight("/fapi/v1/depth", {"limit": limit})


def minutes_to_sync(symbols: int, snapshot_limit: int = 1000, weight_per_minute: int = DEFAULT_WEIGHT_PER_MINUTE) -> int:
    """How many minutes the REST snapshots of `symbols` books take within the weight budget."""
    return math.ceil(symbols * snapshot_weight(snapshot_limit) / weight_per_minute)
