"""A local Binance USDT-M server on 127.0.0.1 for tests: the same REST and websocket protocol.

It simulates a market per symbol (an L2 book, trades, klines) on its own exchange clock, which
advances `exchange_step` per tick (a tick every `tick_seconds` of real time), so 1m bars close in a
fraction of a second. It serves
- REST: /fapi/v1/ping, /time, /exchangeInfo, /depth, /klines (the bar in progress last), and the
  signed /fapi/v1/order (POST) and /fapi/v2/balance (GET), checking the API key, the HMAC-SHA256
  signature over the query (+ body) and the timestamp against `recvWindow` as Binance does;
- websocket: /stream?streams=<sym>@kline_<iv>/<sym>@bookTicker/<sym>@depth@100ms with messages
  {"stream": ..., "data": ...} in Binance's field layout.
On demand it drops every websocket connection (optionally refusing new ones for a while) and
injects a depth-sequence gap (one diff is applied to its book but not sent). It remembers the top
of its book after every update id, so a test can check a client's rebuilt book exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve

from winiswin_pipelines.marketdata.klines import interval_ms

TICK = 0.1  # price grid
LOT = 0.001  # quantity grid
START_MS = 1_721_347_200_000  # 2024-07-19 00:00:00 UTC: the simulated exchange clock starts here
HISTORY_DEPTH = 20


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


class LocalBinanceServer:
    """Start with `start()` (or as a context manager); REST at `rest_url`, websocket at `ws_url`."""

    def __init__(self, symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"), *, intervals: tuple[str, ...] = ("1m",),
                 api_key: str = "local-test-key", api_secret: str = "local-test-secret",
                 tick_seconds: float = 0.005, exchange_step_ms: int = 1_000, seed: int = 7):
        rng = random.Random(seed)
        self.markets = {s: _Market(s, intervals, random.Random(rng.random())) for s in symbols}
        self.api_key, self.api_secret = api_key, api_secret
        self.tick_seconds, self.exchange_step_ms = tick_seconds, exchange_step_ms
        self.now_ms = START_MS
        self.time_offset_ms = 0  # added to /fapi/v1/time and the timestamp check: a drifting exchange clock
        self.orders: list[dict[str, str]] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every REST request
        self._lock = threading.RLock()
        self._gaps: set[str] = set()
        self._refuse_until = 0.0
        self._connections: dict[ServerConnection, set[str]] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._rest_handler())
        self.ws_port = 0

    # -- control -----------------------------------------------------------------------------------

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

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

        def abort() -> int:
            for connection in list(self._connections):
                connection.transport.abort()
            return len(self._connections)

        return self._call_in_loop(abort)

    def inject_gap(self, symbol: str) -> None:
        """The next depth diff of `symbol` changes the book but is not sent: clients see a `pu` gap."""
        self._gaps.add(symbol)

    def book_at(self, symbol: str, update_id: int) -> tuple[list[float], list[float], list[float], list[float]]:
        """(bid prices, bid sizes, ask prices, ask sizes), best first, after update `update_id`."""
        with self._lock:
            return self.markets[symbol].history[update_id]

    def closed_bars(self, symbol: str, interval: str) -> list[list[Any]]:
        """The closed bars so far as REST rows."""
        with self._lock:
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
        self._server = await serve(self._on_connection, "127.0.0.1", 0, process_request=self._check_request,
                                   compression=None)
        self.ws_port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._run_market())
        self._ready.set()

    async def _shutdown(self) -> None:
        self._ticker.cancel()
        self._server.close()
        await self._server.wait_closed()

    def _check_request(self, connection: ServerConnection, request):
        if time.monotonic() < self._refuse_until:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refusing connections for a while\n")
        if urlsplit(request.path).path != "/stream":
            return connection.respond(HTTPStatus.NOT_FOUND, "only the combined stream /stream is served\n")
        return None

    async def _on_connection(self, connection: ServerConnection) -> None:
        query = dict(parse_qsl(urlsplit(connection.request.path).query))
        self._connections[connection] = set(filter(None, query.get("streams", "").split("/")))
        try:
            await connection.wait_closed()
        finally:
            self._connections.pop(connection, None)

    async def _run_market(self) -> None:
        while True:
            with self._lock:
                self.now_ms += self.exchange_step_ms
                outgoing = []
                for symbol, market in self.markets.items():
                    for suffix, data in market.step(self.now_ms):
                        if suffix.startswith("depth") and symbol in self._gaps:
                            self._gaps.discard(symbol)
                            continue
                        outgoing.append((f"{symbol.lower()}@{suffix}", data))
            for stream, data in outgoing:
                listeners = [c for c, streams in self._connections.items() if stream in streams]
                if listeners:
                    broadcast(listeners, json.dumps({"stream": stream, "data": data}))
            await asyncio.sleep(self.tick_seconds)

    # -- REST --------------------------------------------------------------------------------------

    def _rest_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_DELETE(self) -> None:
                self._dispatch("DELETE")

            def log_message(self, *_: object) -> None:
                pass

            def _dispatch(self, method: str) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                with server._lock:
                    server.requests.append((method, parts.path))
                status, payload = server._route(method, parts.path, parts.query, body, self.headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _route(self, method: str, path: str, query: str, body: str, headers) -> tuple[int, Any]:
        params = dict(parse_qsl(query)) | dict(parse_qsl(body))
        public = {
            ("GET", "/fapi/v1/ping"): lambda: {},
            ("GET", "/fapi/v1/time"): lambda: {"serverTime": self._server_time()},
            ("GET", "/fapi/v1/exchangeInfo"): self._exchange_info,
            ("GET", "/fapi/v1/depth"): lambda: self._depth(params),
            ("GET", "/fapi/v1/klines"): lambda: self._klines(params),
        }
        signed = {("POST", "/fapi/v1/order"): lambda: self._new_order(params),
                  ("GET", "/fapi/v2/balance"): lambda: [{"asset": "USDT", "balance": "1000.0",
                                                         "availableBalance": "1000.0"}]}
        try:
            if (method, path) in public:
                return 200, public[(method, path)]()
            if (method, path) in signed:
                refused = self._check_signature(query, body, headers, params)
                return refused or (200, signed[(method, path)]())
        except KeyError as missing:
            return 400, {"code": -1102, "msg": f"Mandatory parameter {missing} was not sent."}
        return 404, {"code": -5000, "msg": f"Path {path}, Method {method} is invalid"}

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
                {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120", "stepSize": "0.001"},
                {"filterType": "MIN_NOTIONAL", "notional": "5"},
            ],
        } for symbol in self.markets]
        return {"timezone": "UTC", "serverTime": self._server_time(), "symbols": symbols}

    def _depth(self, params: dict) -> dict[str, Any]:
        with self._lock:
            return self.markets[params["symbol"]].snapshot(int(params.get("limit", 500)), self.now_ms)

    def _klines(self, params: dict) -> list[list[Any]]:
        interval, limit = params["interval"], int(params.get("limit", 500))
        start = int(params.get("startTime", 0))
        with self._lock:
            market = self.markets[params["symbol"]]
            bars = market.closed_bars.get(interval, []) + [market.bars[interval]]
            return [bar.rest_row() for bar in bars if bar.open_ms >= start][:limit]

    def _new_order(self, params: dict) -> dict[str, Any]:
        with self._lock:
            self.orders.append(params)
            order_id = len(self.orders)
        return {"orderId": order_id, "symbol": params["symbol"], "status": "NEW",
                "clientOrderId": params.get("newClientOrderId", f"local-{order_id}"), "side": params["side"],
                "type": params["type"], "origQty": params.get("quantity", "0"), "price": params.get("price", "0"),
                "executedQty": "0", "updateTime": self._server_time()}
