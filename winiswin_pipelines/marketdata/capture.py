"""Reader of recorded Binance USDT-M websocket captures.

A capture is a text file (gzip or plain) with one message per line: `<local receive timestamp>
<json>`. The timestamp is an integer in ms, µs or ns since the epoch (sniffed per line from its
length). The JSON is either a combined-stream message `{"stream": ..., "data": {...}}`, a raw
stream event (`{"e": "depthUpdate", ...}`), or a REST depth snapshot (`{"lastUpdateId": ...}`),
which is reported as the stream `rest_depth`.
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

REST_DEPTH = "rest_depth"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_STREAM_PREFIX = b'{"stream":"'
# Raw (non-combined) events name their stream by event type and symbol.
_EVENT_STREAMS = {
    "depthUpdate": "depth",
    "bookTicker": "bookTicker",
    "trade": "trade",
    "aggTrade": "aggTrade",
    "markPriceUpdate": "markPrice",
    "kline": "kline",
}


class CaptureFormatError(ValueError):
    """A capture line that cannot be read; names the file and the line."""


@dataclass(frozen=True, slots=True)
class CaptureMessage:
    receive_time: dt.datetime
    stream: str
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return stream_kind(self.stream)


def stream_kind(stream: str) -> str:
    """The kind of a stream name: "btcusdt@depth@0ms" -> "depth", "rest_depth" -> "rest_depth"."""
    parts = stream.split("@")
    return parts[1] if len(parts) > 1 else stream


def stream_symbol(stream: str) -> str | None:
    """The upper-case symbol of a stream name, None for the REST snapshot."""
    return stream.split("@")[0].upper() if "@" in stream else None


def receive_time_from_stamp(stamp: int) -> dt.datetime:
    """An integer epoch stamp in ms, µs or ns (sniffed from its size) as an aware UTC datetime."""
    if stamp >= 10**17:
        micros = stamp // 1000
    elif stamp >= 10**14:
        micros = stamp
    else:
        micros = stamp * 1000
    return _EPOCH + dt.timedelta(microseconds=micros)


def open_text_or_gzip(path: Path) -> IO[bytes]:
    """`path` opened for binary reading, transparently gunzipped when it starts with gzip's magic."""
    with path.open("rb") as probe:
        is_gzip = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if is_gzip else path.open("rb")


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """A capture line that could not be read, kept with where it was and why."""

    path: Path
    line_number: int
    reason: str
    text: bytes


def read_capture(
    path: str | Path, *, kinds: Collection[str] | None = None, rejected: list[RejectedLine] | None = None
) -> Iterator[CaptureMessage]:
    """The messages of a capture file, in file (receive) order.

    `kinds` keeps only those stream kinds (e.g. {"depth", "rest_depth"}); other combined-stream
    lines are skipped before their JSON is parsed, which makes a book rebuild much faster.
    A line that cannot be read raises `CaptureFormatError`, or, when a `rejected` list is given,
    is appended to it and skipped (a recorder that crashed leaves a truncated last line).
    """
    path = Path(path)
    kind_of: dict[bytes, str] = {}  # stream name -> kind; a capture has only a few streams
    with open_text_or_gzip(path) as handle:
        for number, line in enumerate(_lines(handle), start=1):
            stamp, _, payload = line.strip().partition(b" ")
            if not stamp:
                continue
            # A truncated stream name is not skipped: the line is parsed, and rejected.
            if (
                kinds is not None
                and payload.startswith(_STREAM_PREFIX)
                and (end := payload.find(b'"', len(_STREAM_PREFIX))) > 0
            ):
                name = payload[len(_STREAM_PREFIX) : end]
                if (kind_of.get(name) or kind_of.setdefault(name, stream_kind(name.decode()))) not in kinds:
                    continue
            try:
                message = _parse_line(stamp, payload)
            except CaptureFormatError as error:
                if rejected is None:
                    raise CaptureFormatError(f"{path}:{number}: {error}") from None
                rejected.append(RejectedLine(path, number, str(error), line))
                continue
            if kinds is None or message.kind in kinds:
                yield message


def _lines(handle: IO[bytes], block_size: int = 1 << 22) -> Iterator[bytes]:
    # Splitting big blocks is several times faster than readline() on a gzip stream.
    rest = b""
    while block := handle.read(block_size):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _parse_line(stamp: bytes, payload: bytes) -> CaptureMessage:
    try:
        receive_time = receive_time_from_stamp(int(stamp))
        body = orjson.loads(payload)
    except ValueError as error:
        raise CaptureFormatError(f"not '<timestamp> <json>': {error}") from None
    if not isinstance(body, dict):
        raise CaptureFormatError(f"not a JSON object: {payload[:80]!r}")
    if "stream" in body and "data" in body:
        return CaptureMessage(receive_time, body["stream"], body["data"])
    if "lastUpdateId" in body:
        return CaptureMessage(receive_time, REST_DEPTH, body)
    kind = _EVENT_STREAMS.get(body.get("e"))
    if kind is None or "s" not in body:
        raise CaptureFormatError(f"unknown message type {payload[:80]!r}")
    return CaptureMessage(receive_time, f"{body['s'].lower()}@{kind}", body)
