"""Trade events: what the trading loop tells the recorder, validated once when they are built.

Frozen dataclasses (the one call signature of the recorder: legacy callers passed dicts to
methods expecting arguments and lost trades). Every time is timezone-aware and normalised to UTC;
prices and quantities are finite and positive; confidence and probabilities are on 0..1.
`to_record` / `event_from_record` turn an event into a JSON-ready dict and back (the spool format).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from winiswin_pipelines.db.models import TradeStatus
from winiswin_pipelines.trading.risk import SIDES

CLOSED_STATUSES = (TradeStatus.CLOSED.value, TradeStatus.LIQUIDATED.value)


def _fail(event: object, name: str, problem: str) -> None:
    uid = getattr(event, "exit_uid", None) or getattr(event, "trade_uid", "?")
    raise ValueError(f"{type(event).__name__} {uid!r}: {name} {problem}")


def _check_uid(event: object, name: str, max_length: int) -> None:
    value = getattr(event, name)
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        _fail(event, name, f"must be a non-empty string of at most {max_length} characters, got {value!r}")


def _check_symbol(event: object) -> None:
    value = event.symbol
    if not isinstance(value, str) or not value or len(value) > 32 or value != value.upper() or "/" in value:
        _fail(event, "symbol", f"must be a Binance symbol such as 'BTCUSDT', got {value!r}")


def _normalise_time(event: object, name: str, *, optional: bool = False) -> None:
    value = getattr(event, name)
    if value is None and optional:
        return
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        _fail(event, name, f"must be a timezone-aware datetime, got {value!r}")
    object.__setattr__(event, name, value.astimezone(dt.UTC))


def _check_number(event: object, name: str, *, positive: bool = False, unit: bool = False,
                  optional: bool = False) -> None:
    value = getattr(event, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(event, name, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        _fail(event, name, f"must be positive, got {value!r}")
    if unit and not 0 <= value <= 1:
        _fail(event, name, f"must be on 0..1, got {value!r}")
    object.__setattr__(event, name, float(value))


class TradeEvent:
    """Base of the four events; `kind` names the event in the spool."""

    kind: ClassVar[str]
    trade_uid: str
    symbol: str

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": self.kind}
        for field in fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            record[field.name] = value.isoformat() if isinstance(value, dt.datetime) else value
        return record


@dataclass(frozen=True, slots=True)
class TradeOpened(TradeEvent):
    """A filled entry: `entry_time` is the real fill time (the time stop counts from it)."""

    kind: ClassVar[str] = "open"
    trade_uid: str
    symbol: str
    side: str
    entry_time: dt.datetime
    entry_price: float
    quantity: float
    leverage: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    strategy: str | None = None
    confidence: float | None = None
    win_probability: float | None = None
    features: dict[str, Any] | None = None
    is_virtual: bool = False

    def __post_init__(self) -> None:
        _check_uid(self, "trade_uid", 128)
        _check_symbol(self)
        if self.side not in SIDES:
            _fail(self, "side", f"must be one of {SIDES}, got {self.side!r}")
        _normalise_time(self, "entry_time")
        for name in ("entry_price", "quantity"):
            _check_number(self, name, positive=True)
        for name in ("leverage", "stop_loss", "take_profit"):
            _check_number(self, name, positive=True, optional=True)
        for name in ("confidence", "win_probability"):
            _check_number(self, name, unit=True, optional=True)
        if self.strategy is not None and (not isinstance(self.strategy, str) or len(self.strategy) > 64):
            _fail(self, "strategy", f"must be a name of at most 64 characters, got {self.strategy!r}")
        if self.features is not None and not isinstance(self.features, dict):
            _fail(self, "features", f"must be a dict, got {type(self.features).__name__}")
        if not isinstance(self.is_virtual, bool):
            _fail(self, "is_virtual", f"must be a bool, got {self.is_virtual!r}")


@dataclass(frozen=True, slots=True)
class TradePartiallyClosed(TradeEvent):
    """Part of a position closed; `exit_uid` identifies this partial exit (the upsert key)."""

    kind: ClassVar[str] = "partial"
    exit_uid: str
    trade_uid: str
    symbol: str
    exit_time: dt.datetime
    exit_price: float
    quantity: float
    pnl: float
    pnl_pct: float | None = None
    fees: float | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_uid(self, "exit_uid", 160)
        _check_uid(self, "trade_uid", 128)
        _check_symbol(self)
        _normalise_time(self, "exit_time")
        for name in ("exit_price", "quantity"):
            _check_number(self, name, positive=True)
        _check_number(self, "pnl")
        for name in ("pnl_pct", "fees"):
            _check_number(self, name, optional=True)


@dataclass(frozen=True, slots=True)
class TradeClosed(TradeEvent):
    """The position is fully closed (`status` CLOSED, or LIQUIDATED)."""

    kind: ClassVar[str] = "close"
    trade_uid: str
    symbol: str
    exit_time: dt.datetime
    exit_price: float
    pnl: float
    pnl_pct: float | None
    fees: float | None = None
    exit_reason: str | None = None
    status: str = TradeStatus.CLOSED.value

    def __post_init__(self) -> None:
        _check_uid(self, "trade_uid", 128)
        _check_symbol(self)
        _normalise_time(self, "exit_time")
        _check_number(self, "exit_price", positive=True)
        _check_number(self, "pnl")
        for name in ("pnl_pct", "fees"):
            _check_number(self, name, optional=True)
        if self.status not in CLOSED_STATUSES:
            _fail(self, "status", f"must be one of {CLOSED_STATUSES}, got {self.status!r}")


@dataclass(frozen=True, slots=True)
class TradeCancelled(TradeEvent):
    """The trade was cancelled (e.g. its entry order never filled completely and was withdrawn)."""

    kind: ClassVar[str] = "cancel"
    trade_uid: str
    symbol: str
    time: dt.datetime
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_uid(self, "trade_uid", 128)
        _check_symbol(self)
        _normalise_time(self, "time")


EVENT_TYPES: dict[str, type[TradeEvent]] = {
    cls.kind: cls for cls in (TradeOpened, TradePartiallyClosed, TradeClosed, TradeCancelled)
}
_TIME_FIELDS = {"entry_time", "exit_time", "time"}


def event_from_record(record: dict[str, Any]) -> TradeEvent:
    """The event a `to_record` dict describes (validated again)."""
    values = dict(record)
    kind = values.pop("kind", None)
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown trade event kind {kind!r} (expected one of {sorted(EVENT_TYPES)})")
    for name in _TIME_FIELDS & values.keys():
        values[name] = dt.datetime.fromisoformat(values[name])
    return EVENT_TYPES[kind](**values)
