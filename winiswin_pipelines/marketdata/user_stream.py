"""Binance USDT-M user-data stream: the account's own events, pushed as they happen.

`UserDataStream.events()` creates a listenKey (`POST /fapi/v1/listenKey`), reads
`<ws_url>/ws/<listenKey>` and yields every event as Binance sends it (`ORDER_TRADE_UPDATE`,
`ACCOUNT_UPDATE`, `ALGO_UPDATE`, ...). A task keeps the key alive (`PUT /fapi/v1/listenKey` every
`keepalive_seconds`, 30 minutes by default: a key lives 60). A new key is asked for when Binance
says the key expired (`listenKeyExpired`, or -1125 to a keep-alive) or the connection drops, with
back-off between attempts. After every (re)connection it yields `{"e": CONNECTED}`: events may have
been missed meanwhile, so the consumer knows to reconcile with REST.

The listenKey gives read access to the account's events: it never appears in logs or errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from winiswin_pipelines.marketdata.binance import BinanceAPIError, BinanceRestClient

log = logging.getLogger(__name__)

CONNECTED = "streamConnected"  # the stream's own event: (re)connected, events may have been missed before
KEEPALIVE_SECONDS = 30 * 60.0
LISTEN_KEY_EXPIRED = "listenKeyExpired"
LISTEN_KEY_UNKNOWN = -1125


class UserDataStream:
    """The account's events over a listenKey, kept alive and renewed (see the module docstring)."""

    def __init__(self, rest: BinanceRestClient, ws_url: str, *, keepalive_seconds: float = KEEPALIVE_SECONDS,
                 backoff: tuple[float, float] = (0.1, 10.0)):
        self.rest = rest
        self.ws_url = ws_url.rstrip("/")
        self.keepalive_seconds = keepalive_seconds
        self.backoff = backoff
        self.keys_created = 0
        self.connections = 0
        self.keepalives = 0
        self._ws: ClientConnection | None = None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events forever (until the consumer stops), reconnecting with a fresh key whenever needed."""
        pause = self.backoff[0]
        while True:
            try:
                key = await self.rest.new_listen_key()
            except BinanceAPIError as error:
                log.warning("user-data stream: no listenKey (%s); retrying in %.1fs", error.message, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.backoff[1])
                continue
            self.keys_created += 1
            keeper = asyncio.create_task(self._keep_alive())
            reason = "closed by the server"
            try:
                async with connect(f"{self.ws_url}/ws/{key}", open_timeout=10, ping_interval=20,
                                   ping_timeout=20) as ws:
                    self._ws = ws
                    self.connections += 1
                    pause = self.backoff[0]
                    yield {"e": CONNECTED}
                    async for raw in ws:
                        event = _decode(raw)
                        if event.get("e") == LISTEN_KEY_EXPIRED:
                            reason = "the listenKey expired"
                            break
                        if event:
                            yield event
            except (OSError, TimeoutError, WebSocketException) as error:
                reason = type(error).__name__  # not its message: it may hold the URL, and so the key
            finally:
                self._ws = None
                keeper.cancel()
            log.warning("user-data stream: %s; a fresh listenKey in %.1fs", reason, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.backoff[1])

    async def _keep_alive(self) -> None:
        """PUT the key every `keepalive_seconds`; when Binance no longer knows it, drop the connection
        so `events` starts again with a new one."""
        while True:
            await asyncio.sleep(self.keepalive_seconds)
            try:
                await self.rest.keep_listen_key_alive()
                self.keepalives += 1
            except BinanceAPIError as error:
                log.warning("user-data stream: keep-alive refused (%s)", error.message)
                if error.code == LISTEN_KEY_UNKNOWN and self._ws is not None:
                    await self._ws.close()
                    return


def _decode(raw: str | bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.warning("user-data stream: skipping a message that is not JSON")
        return {}
    return event if isinstance(event, dict) else {}
