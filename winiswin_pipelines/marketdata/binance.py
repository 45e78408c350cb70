"""Binance USDT-M futures protocol: REST (public and signed) and the combined websocket stream.

`BinanceRestClient` speaks REST through httpx: klines (warm-up and backfill), depth snapshots,
exchangeInfo, and signed requests (HMAC-SHA256 over the query string, `timestamp` from the
server-synchronised clock, `recvWindow`), e.g. `new_order`. Errors raise `BinanceAPIError` with
Binance's code and message, never the key, secret or signature.

`BinanceStream` reads `/stream?streams=...` with `websockets`, reconnects with back-off, and keeps
one local L2 book per symbol by Binance's futures rules (`OrderBook`): a book is re-synchronised
from a REST snapshot after every (re)connect and whenever a diff's `pu` breaks the sequence; no
book update is reported while a book is out of sync, so nobody trades on a stale book.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from winiswin_pipelines.marketdata.capture import stream_kind, stream_symbol
from winiswin_pipelines.marketdata.klines import interval_ms
from winiswin_pipelines.marketdata.orderbook import DiffResult, OrderBook

log = logging.getLogger(__name__)

BINANCE_FUTURES_REST = "https://fapi.binance.com"
BINANCE_FUTURES_WS = "wss://fstream.binance.com"
DEFAULT_RECV_WINDOW_MS = 5_000
KLINES_PAGE = 1_500  # the most /fapi/v1/klines returns per request
_TIMESTAMP_OUTSIDE_WINDOW = -1021


class BinanceAPIError(RuntimeError):
    """Binance refused a request: HTTP status, Binance error code and message, method and path."""

    def __init__(self, status: int, code: int | None, message: str, method: str, path: str):
        super().__init__(f"Binance {method} {path} failed: HTTP {status}, code {code}: {message}")
        self.status, self.code, self.message = status, code, message


class BinanceRestClient:
    """Async REST client of Binance USDT-M futures (use `async with`, or `await close()`)."""

    def __init__(self, base_url: str = BINANCE_FUTURES_REST, api_key: str | None = None,
                 api_secret: str | None = None, *, recv_window_ms: int = DEFAULT_RECV_WINDOW_MS,
                 timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._api_secret = api_secret
        self.recv_window_ms = recv_window_ms
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._clock_offset_ms: int | None = None  # server time minus local time

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

    async def closed_klines_since(self, symbol: str, interval: str, start_time: int) -> list[list[Any]]:
        """Every closed kline opening at or after `start_time` (paged), without the open bar.

        Binance always lists the bar in progress last; a page shorter than the limit therefore ends
        with it, so it is dropped there (this needs no clock agreement with the exchange).
        """
        step, rows = interval_ms(interval), []
        while True:
            page = await self.klines(symbol, interval, start_time=start_time, limit=KLINES_PAGE)
            if len(page) < KLINES_PAGE:
                return rows + page[:-1]
            rows += page
            start_time = int(page[-1][0]) + step

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

    async def sync_clock(self) -> None:
        """Measure the offset between Binance's clock and ours (half the round trip corrected)."""
        before = time.time() * 1000
        server = await self.server_time()
        after = time.time() * 1000
        self._clock_offset_ms = int(server - (before + after) / 2)

    # -- transport ---------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, params: dict[str, Any] | None = None, *,
                       signed: bool = False) -> Any:
        query = urlencode([(key, _param_text(value)) for key, value in (params or {}).items()])
        headers = {}
        if signed:
            timestamp = int(time.time() * 1000) + (self._clock_offset_ms or 0)
            query = "&".join(filter(None, [query, f"recvWindow={self.recv_window_ms}", f"timestamp={timestamp}"]))
            signature = hmac.new(self._api_secret.encode(), query.encode(), hashlib.sha256).hexdigest()
            query = f"{query}&signature={signature}"
            headers["X-MBX-APIKEY"] = self._api_key
        url = f"{path}?{query}" if query else path
        try:
            response = await self._http.request(method, url, headers=headers)
        except httpx.HTTPError as error:
            detail = type(error).__name__ if signed else f"{type(error).__name__}: {error}"  # URL holds the signature
            raise BinanceAPIError(0, None, detail, method, path) from None
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = body.get("code"), body.get("msg", response.text)
            except ValueError:
                code, message = None, response.text[:200]
            raise BinanceAPIError(response.status_code, code, message, method, path)
        return response.json()


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "f").rstrip("0").rstrip(".") or "0"
    return str(value)


@dataclass(frozen=True, slots=True)
class StreamUpdate:
    """One thing the stream reports: a raw `kline` or `bookTicker` event, a `book` update (the
    symbol's book is in sync and moved; `book` is live, read it at once), or `reconnected`."""

    kind: str
    symbol: str | None
    data: dict[str, Any]
    receive_time: dt.datetime
    book: OrderBook | None = None


@dataclass
class StreamStats:
    connections: int = 0
    reconnects: int = 0
    snapshots: int = 0
    gaps: dict[str, int] = field(default_factory=dict)


class BinanceStream:
    """The combined stream of `streams` with reconnects and per-symbol depth books."""

    def __init__(self, ws_url: str, streams: Sequence[str], rest: BinanceRestClient, *,
                 snapshot_limit: int = 1000, backoff: tuple[float, float] = (0.1, 10.0)):
        self.url = f"{ws_url.rstrip('/')}/stream?streams={'/'.join(streams)}"
        self.rest = rest
        self.snapshot_limit = snapshot_limit
        self.backoff = backoff
        self.stats = StreamStats()
        self.books: dict[str, OrderBook] = {}
        self._snapshots: dict[str, asyncio.Task] = {}

    async def updates(self) -> AsyncIterator[StreamUpdate]:
        """Updates forever; reconnects on any connection failure (yields `reconnected` after one)."""
        pause = self.backoff[0]
        while True:
            try:
                async with connect(self.url, max_size=2**23, open_timeout=10) as websocket:
                    self._reset_books()
                    self.stats.connections += 1
                    if self.stats.connections > 1:
                        self.stats.reconnects += 1
                        yield StreamUpdate("reconnected", None, {}, _now())
                    pause = self.backoff[0]
                    async for raw in websocket:
                        try:
                            message = json.loads(raw)
                        except ValueError:
                            log.warning("Binance stream: skipping a message that is not JSON: %.120r", raw)
                            continue
                        for update in self._handle(message):
                            yield update
                        for update in self._apply_finished_snapshots():
                            yield update
            except (OSError, TimeoutError, WebSocketException) as error:
                log.warning("Binance stream lost (%s: %s); reconnecting in %.1fs", type(error).__name__, error, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.backoff[1])

    def _handle(self, message: dict[str, Any]) -> list[StreamUpdate]:
        stream, data = message.get("stream"), message.get("data")
        if not stream or not isinstance(data, dict):
            return []  # e.g. a reply to a SUBSCRIBE request
        kind, symbol = stream_kind(stream), stream_symbol(stream)
        if kind == "depth":
            return self._on_depth(symbol, data)
        return [StreamUpdate(kind.split("_")[0], symbol, data, _now())]

    def _on_depth(self, symbol: str, diff: dict[str, Any]) -> list[StreamUpdate]:
        book = self.books.setdefault(symbol, OrderBook())
        result = book.apply_diff(diff)
        if result is DiffResult.GAP:
            self.stats.gaps[symbol] = self.stats.gaps.get(symbol, 0) + 1
            log.warning("%s depth gap: pu %s after u %s; re-synchronising from a snapshot",
                        symbol, diff.get("pu"), book.last_update_id)
        if not book.is_valid:
            self._request_snapshot(symbol)
            return []
        if result in (DiffResult.APPLIED, DiffResult.SYNCED):
            return [StreamUpdate("book", symbol, diff, _now(), book)]
        return []

    def _request_snapshot(self, symbol: str) -> None:
        if symbol not in self._snapshots:
            self._snapshots[symbol] = asyncio.create_task(self.rest.depth(symbol, self.snapshot_limit))

    def _apply_finished_snapshots(self) -> list[StreamUpdate]:
        updates = []
        for symbol, task in list(self._snapshots.items()):
            if not task.done():
                continue
            del self._snapshots[symbol]
            if task.exception() is not None:
                log.warning("%s depth snapshot failed: %s", symbol, task.exception())
                continue  # the next diff asks again
            self.stats.snapshots += 1
            book = self.books[symbol]
            replayed = [diff for diff, result in book.apply_snapshot(task.result())
                        if result in (DiffResult.APPLIED, DiffResult.SYNCED)]
            if book.is_valid and replayed:
                updates.append(StreamUpdate("book", symbol, replayed[-1], _now(), book))
        return updates

    def _reset_books(self) -> None:
        # Diffs missed while disconnected cannot be recovered: every book starts again.
        for task in self._snapshots.values():
            task.cancel()
        self._snapshots.clear()
        self.books.clear()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
