"""Normalisation: one raw legacy record -> a `trades` / `trade_partial_exits` row, or a rejection.

Conventions (design.md): symbols as Binance spells them (`BTCUSDT`), side LONG/SHORT, confidence
and probabilities on 0..1, `pnl` in USDT, `pnl_pct` as a fraction, every time UTC-aware. Naive
legacy timestamps are read under an assumed timezone (default UTC) that is recorded in `origin`;
stores whose writer used UTC (`utcnow()`, SQLite CURRENT_TIMESTAMP) are read as UTC and say so.
No copy of the record is kept: `origin` says where it came from, down to its bytes (the SHA-256 of
the file, whose copy is in cold storage, and the record's line and byte range, item, key or row).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from winiswin_pipelines.db.models import TradeStatus
from winiswin_pipelines.legacy import variants as v
from winiswin_pipelines.legacy.records import (
    PARTIAL_EXITS,
    TRADES,
    RawRecord,
    Rejected,
    Row,
    safe_text,
)

UTC = dt.UTC
_parse_iso = dt.datetime.fromisoformat
SYMBOL_PATTERN = r"^[A-Z0-9]{2,32}$"  # a Binance symbol as written
_SYMBOL = re.compile(SYMBOL_PATTERN)
UID_MAX = 128
_STRATEGY_MAX = 64
SIDES = {"LONG": "LONG", "BUY": "LONG", "SHORT": "SHORT", "SELL": "SHORT", "1": "LONG", "-1": "SHORT"}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}
_STATUSES = {**{status.value: status for status in TradeStatus}, "ACTIVE": TradeStatus.OPEN}
WRITER_UTC = "UTC (the legacy writer stored UTC)"
# Confidence / win-probability scales. One store has one scale (its writer's); in a 0..100 store
# 1.0 means 1 %, so a value is never rescaled on its own.
FRACTION, PERCENT = "0..1", "0..100"
_SYMBOLS_SEEN: dict[str, str] = {}
VIRTUAL_CLOSE_NOTE = "virtual close inferred (pnl == pnl_pct): pnl recomputed as pnl_pct * position_value"


class RecordError(ValueError):
    """Why one record cannot be migrated (becomes the quarantine reason)."""


class Normalizer:
    """Normalises the records of one store (`source`, file `relpath`) under a naive-time assumption."""

    def __init__(
        self, source: str, relpath: str, naive_timezone: str = "UTC", scale: str | None = None,
        sha256: str | None = None,
    ):
        """`scale`: the store's confidence scale (FRACTION / PERCENT) when it was decided from the
        store's values; None: the scale documented for each record's writer. `sha256`: the digest of
        the store's bytes (named in every origin, with the record's place in them)."""
        self.source = source
        self.relpath = relpath
        self.naive_timezone = naive_timezone
        self.scale = scale
        self.sha256 = sha256
        try:
            self.naive_tz = UTC if naive_timezone.upper() == "UTC" else ZoneInfo(naive_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone for naive legacy timestamps: {naive_timezone!r}") from exc
        self.assumed = f"{naive_timezone} (assumed)"
        self.seq = 0  # the read order of the last record given a handler (origin's `seq`)
        self._handlers: dict[str, Callable[[dict, dict], dict]] = {
            v.A0: self._ml_record, v.A1: self._ml_record, v.B: self._ml_record, v.B_PRIME: self._ml_record,
            v.C: self._ml_record, v.D: self._enhanced_record, v.PENDING: self._pending_entry,
            v.PENDING_D: self._enhanced_record, v.VIRTUAL_POSITION: self._virtual_position,
            v.SIBLING_LOG: self._sibling_log, v.SIBLING_LOG_PAIR: self._sibling_log_pair, v.SIBLING_PAIRED: self._sibling_paired,
            v.SIBLING_ENTRY: self._sibling_paired, "sqlite-v1": self._sqlite_trade, "sqlite-v2": self._sqlite_trade,
            "sqlite-v2-current": self._sqlite_current, "positions-pair": self._positions_pair,
            "positions-open": self._positions_single, "positions-close": self._positions_single,
        }

    def normalize(self, record: RawRecord) -> Row | Rejected:
        variant = record.variant or v.classify(record.data)
        try:
            if variant == v.PARTIAL_EXIT:
                return self._partial_exit(record)
            handler = self._handlers.get(variant) if variant else None
            if handler is None:
                raise RecordError(f"unknown record variant (keys: {', '.join(sorted(record.data)[:12])})")
            # read order: when a store holds a trade twice, its later record wins
            self.seq = record.seq or self.seq + 1
            origin = self._origin(record, variant)
            origin["seq"] = self.seq
            if self.scale:
                origin["confidence_scale"] = scale_note(self.scale)
            fields = handler(record.data, origin)
            return self._trade_row(record, variant, fields, origin)
        except RecordError as exc:
            return Rejected(record.position, str(exc), self._raw_text(record), variant, record.size)

    def fork(self, seq: int) -> Normalizer:
        """A normaliser of the same store whose read order continues from `seq`."""
        twin = Normalizer(self.source, self.relpath, self.naive_timezone, self.scale, self.sha256)
        twin.seq = seq
        return twin

    def _origin(self, record: RawRecord, variant: str) -> dict:
        """Where the record is: file, position, variant, and the pointer into the file's bytes."""
        origin = {"file": self.relpath, "position": record.position, "variant": variant}
        if self.sha256:
            origin["sha256"] = self.sha256
        if record.pointer:
            origin.update(record.pointer)
        return origin

    # rows ---------------------------------------------------------------------------------------

    def _trade_row(self, record: RawRecord, variant: str, f: dict, origin: dict) -> Row:
        get = f.get
        symbol = symbol_of(get("symbol"))
        side = side_of(get("side"))
        entry_time, exit_time = get("entry_time"), get("exit_time")
        status = get("status") or (TradeStatus.CLOSED if exit_time or get("exit_price") is not None else TradeStatus.OPEN)
        if record.flags:
            origin["notes"] = list(record.flags) + origin.get("notes", [])
        uid = get("uid") or content_uid("trade", record.data)
        values = (
            uid, symbol, side, status, bool(get("is_virtual", False)), entry_time, get("entry_price"),
            exit_time, get("exit_price"), get("quantity"), get("leverage"), get("stop_loss"),
            get("take_profit"), get("pnl"), get("pnl_pct"), get("fees"), get("exit_reason"),
            _strategy(get("strategy")), get("confidence"), get("win_probability"), self.source,
            orjson.dumps(origin),
        )
        first, last = entry_time or exit_time, exit_time or entry_time
        return Row(TRADES, uid, values, variant, record.position, first, last, record.size, record.raw_json)

    def _partial_exit(self, record: RawRecord) -> Row:
        r = record.data
        exit_time = self._time(r, "exit_timestamp")
        if exit_time is None:
            raise RecordError("partial exit without exit_timestamp")
        uid = content_uid("partial", r)
        values = (
            uid, symbol_of(r.get("symbol")), exit_time, price(r, "exit_price"), number(r, "closed_quantity"),
            number(r, "pnl"), number(r, "pnl_pct"),  # pnl_pct of a partial is pnl / risk_amount (a fraction)
            number(r, "fees"), _text(r.get("reason")), self.source, orjson.dumps(self._partial_origin(record)),
        )
        return Row(PARTIAL_EXITS, uid, values, v.PARTIAL_EXIT, record.position, exit_time, exit_time, record.size,
                   record.raw_json)

    def _partial_origin(self, record: RawRecord) -> dict:
        """A partial exit's origin also keeps what links it to its trade: the trade id the record
        names (`trade_id` / `entry_id`) and its direction."""
        origin = self._origin(record, v.PARTIAL_EXIT)
        r = record.data
        named = next((_text(r[name]) for name in ("trade_id", "entry_id") if r.get(name)), None)
        if named:
            origin["trade_id"] = named
        if r.get("direction"):
            origin["direction"] = _text(r["direction"])
        return origin

    def _raw_text(self, record: RawRecord) -> str:
        # A rejected record keeps its text in quarantine: the original bytes when it had JSON text.
        return safe_text(record.raw_json if record.raw_json is not None else orjson.dumps(record.data))

    # variants -----------------------------------------------------------------------------------

    def _ml_record(self, r: dict, origin: dict) -> dict:
        """winiswin2 TradeRecorder lines A0/A1/B/B'/C: one closed trade, flat."""
        origin["naive_time"] = self.assumed
        trade_id = _text(r.get("trade_id"))
        pnl, pnl_pct = number(r, "pnl"), number(r, "pnl_pct")
        is_virtual = False
        if origin["variant"] in (v.A0, v.A1) and pnl is not None and pnl != 0 and pnl == pnl_pct:
            # v3.16 fed virtual closes through the same recorder with pnl = current_pnl / 100 (a fraction).
            is_virtual = True
            value = number(r, "position_value")
            pnl = pnl_pct * value if value else None
            origin["notes"] = [VIRTUAL_CLOSE_NOTE]
        if trade_id and trade_id.startswith("REBUILT_"):
            origin["rebuilt"] = True
        return {
            "uid": legacy_uid(trade_id), "symbol": r.get("symbol"), "side": r.get("direction"),
            "entry_time": self._time(r, "entry_timestamp"), "exit_time": self._time(r, "exit_timestamp"),
            "entry_price": price(r, "entry_price"), "exit_price": price(r, "exit_price"),
            "stop_loss": price(r, "stop_loss"), "take_profit": price(r, "take_profit"),
            "leverage": number(r, "leverage"), "pnl": pnl, "pnl_pct": pnl_pct, "is_virtual": is_virtual,
            "exit_reason": _text(r.get("close_reason")),
            "confidence": self._unit(r, "confidence_score") if "confidence_score" in r else self._unit(r, "confidence"),
            "win_probability": self._unit(r, "win_probability"),
        }

    def _enhanced_record(self, r: dict, origin: dict) -> dict:
        """EnhancedTradeRecorder (D): entry and exit merged flat, `reason`; or its pending entry."""
        origin["naive_time"] = self.assumed
        return {
            "uid": legacy_uid(_text(r.get("entry_id")) or _text(r.get("trade_id"))), "symbol": r.get("symbol"),
            "side": r.get("direction"), "entry_time": self._time(r, "entry_timestamp"),
            "exit_time": self._time(r, "exit_timestamp"), "entry_price": price(r, "entry_price"),
            "exit_price": price(r, "exit_price"), "quantity": number(r, "quantity"), "leverage": number(r, "leverage"),
            "pnl": number(r, "pnl"), "pnl_pct": number(r, "pnl_pct"), "exit_reason": _text(r.get("reason")),
            "confidence": self._unit(r, "confidence"), "win_probability": self._unit(r, "win_probability"),
        }

    def _pending_entry(self, r: dict, origin: dict) -> dict:
        """TradeRecorder's pending entry: a position that never got its exit recorded -> OPEN."""
        origin["naive_time"] = self.assumed
        return {
            "uid": legacy_uid(_text(r.get("entry_id"))), "symbol": r.get("symbol"), "side": r.get("direction"),
            "status": TradeStatus.OPEN, "entry_time": self._time(r, "entry_timestamp"), "entry_price": price(r, "entry_price"),
            "leverage": number(r, "leverage"), "confidence": self._unit(r, "confidence"),
            "win_probability": self._unit(r, "win_probability"),
        }

    def _virtual_position(self, r: dict, origin: dict) -> dict:
        """VirtualPositionManager: paper positions keyed by symbol; `pnl_pct` a fraction, `current_pnl` percent."""
        origin["naive_time"] = self.assumed
        closed = boolean(r, "is_closed") or str(r.get("status", "")).lower() == "closed"
        entry_time = self._time(r, "entry_timestamp")
        identity = _text(r.get("signal_id")) or f"virtual:{r.get('symbol')}:{r.get('direction')}:{r.get('entry_timestamp')}"
        # pnl_pct is written as current_pnl / 100, a fraction (legacy-system.md §2.1); current_pnl is percent.
        pnl_pct = number(r, "pnl_pct") if r.get("pnl_pct") is not None else percent(r, "current_pnl")
        return {
            "uid": legacy_uid(identity), "symbol": r.get("symbol"), "side": r.get("direction"),
            "status": TradeStatus.CLOSED if closed else TradeStatus.OPEN, "is_virtual": True, "entry_time": entry_time,
            "exit_time": self._time(r, "close_timestamp") if closed else None,
            "entry_price": price(r, "entry_price"), "exit_price": price(r, "current_price") if closed else None,
            "stop_loss": price(r, "stop_loss"), "take_profit": price(r, "take_profit"),
            "leverage": number(r, "leverage"), "pnl_pct": pnl_pct if closed else None,
            "exit_reason": _text(r.get("close_reason")), "confidence": self._unit(r, "confidence"),
        }

    def _sibling_log(self, r: dict, origin: dict) -> dict:
        """Sibling TradeLogger.log_trade rows (utcnow): one event; with an exit price it is a close."""
        origin["naive_time"] = WRITER_UTC
        at = self._time(r, "timestamp", tz=UTC)
        exit_price = price(r, "exit_price")
        closing = v.is_sibling_exit(r)
        return {
            "symbol": r.get("symbol"), "side": r.get("side") or r.get("type"), "status": TradeStatus.CLOSED if closing else TradeStatus.OPEN,
            "entry_time": None if closing else at, "exit_time": at if closing else None,
            "entry_price": price(r, "entry_price"), "exit_price": exit_price, "quantity": number(r, "quantity"),
            "stop_loss": price(r, "stop_loss"), "take_profit": price(r, "take_profit"), "pnl": number(r, "pnl"),
            "pnl_pct": percent(r, "pnl_percent"), "exit_reason": _text(r.get("reason")), "strategy": r.get("strategy"),
        }

    def _sibling_log_pair(self, r: dict, origin: dict) -> dict:
        """A sibling ENTRY row and the EXIT row that closed it: one closed trade, under the uid the
        ENTRY had alone (so a re-migration closes the OPEN trade it left instead of adding another)."""
        entry, exit_ = r["entry"], r["exit"]
        fields = self._sibling_log(exit_, origin)
        for name, value in self._sibling_log(entry, origin).items():
            if fields.get(name) is None:  # what the EXIT row left out, the ENTRY row says
                fields[name] = value
        fields["uid"] = content_uid("trade", entry)
        return fields

    def _sibling_paired(self, r: dict, origin: dict) -> dict:
        """Sibling ml_training_data.json (entry + `exit`) or a pending entry alone; confidence 0..100."""
        origin["naive_time"] = WRITER_UTC
        features = r.get("signal_features") if isinstance(r.get("signal_features"), dict) else {}
        exit_ = r.get("exit") if isinstance(r.get("exit"), dict) else {}
        if r.get("exit") is not None and not exit_:
            raise RecordError("exit: expected an object")
        return {
            "uid": legacy_uid(_text(r.get("trade_id"))), "symbol": r.get("symbol"), "side": r.get("side"),
            "entry_time": self._time(r, "timestamp", tz=UTC), "entry_price": price(r, "entry_price"),
            "quantity": number(r, "quantity"), "stop_loss": price(r, "stop_loss"),
            "take_profit": price(r, "take_profit"), "leverage": number(r, "leverage"),
            "is_virtual": boolean(r, "is_virtual") or boolean(exit_, "is_virtual"),
            "confidence": self._unit(features, "confidence", writer=PERCENT),
            "strategy": features.get("strategy"),
            "exit_time": self._time(exit_, "timestamp", tz=UTC) if exit_ else None,
            "exit_price": price(exit_, "exit_price"), "pnl": number(exit_, "pnl"),
            "pnl_pct": percent(exit_, "pnl_percent"), "exit_reason": _text(exit_.get("exit_reason")),
        }

    def _sqlite_trade(self, r: dict, origin: dict) -> dict:
        """trading_data.db trade_history: v1 (test rows, CURRENT_TIMESTAMP UTC) or v2 (with trade_uid)."""
        v2 = origin["variant"] == "sqlite-v2"
        origin["naive_time"] = self.assumed if v2 else WRITER_UTC
        tz = None if v2 else UTC
        identity = _text(r.get("trade_uid")) if v2 else None
        return {
            "uid": legacy_uid(identity) if identity else content_uid(
                "sqlite", {k: r.get(k) for k in ("id", "symbol", "direction", "entry_time", "entry_price", "position_size")}
            ),
            "symbol": r.get("symbol"), "side": r.get("direction"), "status": status_of(r.get("status")),
            "entry_time": self._time(r, "entry_time", tz=tz), "exit_time": self._time(r, "exit_time", tz=tz),
            "entry_price": price(r, "entry_price"), "exit_price": price(r, "exit_price"),
            "quantity": number(r, "position_size"), "pnl": number(r, "pnl"),
            "pnl_pct": percent(r, "pnl_percentage"), "fees": number(r, "commission"),
            "exit_reason": _text(r.get("exit_reason")), "strategy": r.get("strategy_version"),
            "confidence": self._unit(r, "confidence"), "win_probability": self._unit(r, "win_probability"),
        }

    def _sqlite_current(self, r: dict, origin: dict) -> dict:
        """trading_data.db v2 current_positions: the open positions (same trade_uid as trade_history)."""
        origin["naive_time"] = self.assumed
        return {
            "uid": legacy_uid(_text(r.get("trade_uid"))), "symbol": r.get("symbol"), "side": r.get("direction"),
            "status": TradeStatus.OPEN, "entry_time": self._time(r, "entry_time"), "entry_price": price(r, "entry_price"),
            "quantity": number(r, "position_size"), "leverage": number(r, "leverage"),
            "stop_loss": price(r, "stop_loss_price"), "take_profit": price(r, "take_profit_price"),
            "confidence": self._unit(r, "confidence"), "win_probability": self._unit(r, "win_probability"),
        }

    def _positions_pair(self, r: dict, origin: dict) -> dict:
        """ml_data/positions.csv OPEN row + its CLOSE row (same position_id) -> one closed trade."""
        fields = self._positions_fields(r["close"], origin)
        fields["entry_time"] = self._time(r["open"], "timestamp")
        fields["uid"] = positions_uid(r["open"])
        return fields

    def _positions_single(self, r: dict, origin: dict) -> dict:
        """A positions.csv OPEN without CLOSE (an open trade) or a CLOSE whose OPEN is missing."""
        fields = self._positions_fields(r, origin)
        if r["event"].strip().upper() == "OPEN":
            fields.update(entry_time=self._time(r, "timestamp"), exit_time=None, status=TradeStatus.OPEN, exit_price=None)
        elif (minutes := number(r, "holding_duration_minutes")) is not None and fields["exit_time"]:
            fields["entry_time"] = fields["exit_time"] - dt.timedelta(minutes=minutes)
            origin["notes"] = ["entry_time derived from the close time and holding_duration_minutes"]
        fields["uid"] = positions_uid(r)
        return fields

    def _positions_fields(self, r: dict, origin: dict) -> dict:
        origin["naive_time"] = self.assumed
        return {
            "symbol": r.get("symbol"), "side": r.get("direction"), "is_virtual": boolean(r, "is_virtual"),
            "exit_time": self._time(r, "timestamp"), "entry_price": price(r, "entry_price"),
            "exit_price": price(r, "exit_price"), "stop_loss": price(r, "stop_loss"),
            "take_profit": price(r, "take_profit"), "quantity": number(r, "quantity"),
            "leverage": number(r, "leverage"), "confidence": self._unit(r, "confidence"), "pnl": number(r, "pnl"),
            "pnl_pct": percent(r, "pnl_pct"), "exit_reason": _text(r.get("close_reason")),
        }

    def _unit(self, r: dict, key: str, writer: str = FRACTION) -> float | None:
        """`key` on 0..1: read on the store's decided scale, else on the scale its writer documented."""
        return unit(r, key, percent=(self.scale or writer) == PERCENT)

    # time ---------------------------------------------------------------------------------------

    def _time(self, r: dict, key: str, tz: dt.tzinfo | None = None) -> dt.datetime | None:
        value = r.get(key)
        if value is None or value == "":
            return None
        return to_utc(value, key, tz or self.naive_tz)


# field helpers (raise RecordError with the field name) ------------------------------------------


def scale_note(scale: str) -> str:
    """What `origin` says of a confidence scale decided for the whole store."""
    return f"{scale} (decided for the whole store from its values)"


def to_utc(value: Any, field: str, naive_tz: dt.tzinfo) -> dt.datetime:
    """An ISO string (naive -> `naive_tz`) or epoch seconds/milliseconds, as an aware UTC datetime."""
    if type(value) is str:
        try:
            parsed = _parse_iso(value)
        except ValueError:
            try:
                parsed = _parse_iso(value.strip())
            except ValueError:
                raise RecordError(f"{field}: not a timestamp: {value[:40]!r}") from None
    elif type(value) in (int, float) and math.isfinite(value):
        seconds = value / 1000 if abs(value) > 1e11 else value
        try:
            return dt.datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise RecordError(f"{field}: epoch value out of range: {value}") from None
    else:
        raise RecordError(f"{field}: expected a timestamp, got {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=naive_tz)
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)


def number(r: dict, key: str) -> float | None:
    value = r.get(key)
    kind = type(value)
    if kind is float:  # the common case first: this runs for every numeric field of every record
        if value - value == 0:  # false for NaN and +-Infinity
            return value
        raise RecordError(f"{key}: {value} is NaN or Infinity")
    if value is None or value == "":
        return None
    if kind is int:
        result = float(value)
    elif kind is str:
        try:
            result = float(value)
        except ValueError:
            raise RecordError(f"{key}: expected a number, got {value[:40]!r}") from None
    else:
        raise RecordError(f"{key}: expected a number, got {kind.__name__}")
    if not math.isfinite(result):
        raise RecordError(f"{key}: {value} is NaN or Infinity")
    return result


def price(r: dict, key: str) -> float | None:
    """A price; 0 means "unknown" in the legacy records (stop_loss/take_profit defaults)."""
    value = number(r, key)
    if value is None or value == 0:
        return None
    if value < 0:
        raise RecordError(f"{key}: negative price {value}")
    return value


def unit(r: dict, key: str, *, percent: bool = False) -> float | None:
    """A confidence or probability on 0..1, from a store written on 0..1 or (`percent`) on 0..100.
    The scale is the store's, never guessed from the value: in a 0..100 store 1.0 is 0.01."""
    value = number(r, key)
    if value is None:
        return None
    scaled = value / 100 if percent else value
    if not 0 <= scaled <= 1:
        raise RecordError(f"{key}: {r[key]} is outside {PERCENT if percent else FRACTION}, the scale of this store")
    return scaled


def percent(r: dict, key: str) -> float | None:
    """A value written in percent (2.0 = 2 %), as a fraction."""
    value = number(r, key)
    return None if value is None else value / 100


def boolean(r: dict, key: str) -> bool:
    value = r.get(key)
    if value is None or isinstance(value, bool):
        return bool(value)
    if type(value) is int:
        return value != 0
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise RecordError(f"{key}: expected a boolean, got {str(value)[:40]!r}")


def symbol_of(value: Any) -> str:
    """`BTC/USDT`, `btcusdt`, `BTC/USDT:USDT`, `BTC-USDT` -> `BTCUSDT`."""
    known = _SYMBOLS_SEEN.get(value) if type(value) is str else None
    if known is not None:
        return known
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"symbol: missing or not a string ({value!r:.40})")
    symbol = value.strip().upper().split(":", 1)[0].replace("/", "").replace("-", "").replace("_", "")
    if not _SYMBOL.match(symbol):
        raise RecordError(f"symbol: {value[:40]!r} is not a Binance symbol")
    if len(_SYMBOLS_SEEN) < 100_000:  # a few hundred symbols in practice: the bound only guards memory
        _SYMBOLS_SEEN[value] = symbol
    return symbol


def side_of(value: Any) -> str:
    """LONG/SHORT from LONG/SHORT, BUY/SELL (any case) or the ±1 of early feature records."""
    side = SIDES.get(value) if type(value) is str else None
    if side is None and value is not None:
        side = SIDES.get(str(value).strip().upper().removesuffix(".0"))
    if side is None:
        raise RecordError(f"direction: {str(value)[:40]!r} is not LONG/SHORT or BUY/SELL")
    return side


def status_of(value: Any) -> str | None:
    if value in (None, ""):
        return None
    status = _STATUSES.get(str(value).strip().upper())
    if status is None:
        raise RecordError(f"status: unknown status {str(value)[:40]!r}")
    return status


def legacy_uid(identity: str | None) -> str | None:
    """`legacy:<id>` for a record's own id (ids that are too long are hashed)."""
    if not identity:
        return None
    uid = f"legacy:{identity}"
    return uid if len(uid) <= UID_MAX else f"legacy:sha256:{hashlib.sha256(identity.encode()).hexdigest()}"


def content_uid(kind: str, content: Any) -> str:
    """A deterministic uid from a record's content: the same record always gets the same uid."""
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    return f"legacy:{kind}:{digest}"


def positions_uid(row: dict) -> str:
    # position_id restarts at POS_0000 with every bot run: symbol and open time make it unique.
    return legacy_uid(f"pos:{row.get('position_id')}:{row.get('symbol')}:{row.get('timestamp')}")


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _strategy(value: Any) -> str | None:
    text = _text(value)
    return text[:_STRATEGY_MAX] if text else None
