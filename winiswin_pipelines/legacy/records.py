"""What flows from a legacy store to PostgreSQL: raw records, normalised rows, rejections."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

# Columns written to `trades` (features stay NULL). No copy of the record: `origin` points to its
# bytes in the original file, which is kept in cold storage (see `originals`).
TRADE_COLUMNS: tuple[str, ...] = (
    "trade_uid", "symbol", "side", "status", "is_virtual", "entry_time", "entry_price", "exit_time",
    "exit_price", "quantity", "leverage", "stop_loss", "take_profit", "pnl", "pnl_pct", "fees",
    "exit_reason", "strategy", "confidence", "win_probability", "source", "origin",
)
PARTIAL_EXIT_COLUMNS: tuple[str, ...] = (
    "exit_uid", "symbol", "exit_time", "exit_price", "quantity", "pnl", "pnl_pct", "fees", "reason",
    "source", "origin",
)
QUARANTINE_COLUMNS: tuple[str, ...] = ("source", "position", "reason", "raw_text", "variant")

TRADES = "trades"
PARTIAL_EXITS = "trade_partial_exits"


class LegacySourceError(Exception):
    """A legacy folder or file that cannot be migrated at all (missing, unreadable)."""


@dataclass(slots=True)
class RawRecord:
    """One record as the store holds it. `raw_json` is its original JSON text when it had one."""

    position: str
    data: dict[str, Any]
    raw_json: bytes | None = None
    size: int = 0
    flags: tuple[str, ...] = ()
    variant: str | None = None  # set by readers that know it from the structure (SQLite table, CSV event)
    seq: int = 0  # its place in the store's read order, set where pairing emits records out of order
    pointer: dict[str, Any] | None = None  # where its bytes are in the file (line/offset/length, item, key, row)


@dataclass(slots=True)
class Rejected:
    """A record that cannot be migrated: it goes to `legacy_quarantine` with the reason."""

    position: str
    reason: str
    raw_text: str
    variant: str | None = None
    size: int = 0


@dataclass(slots=True)
class Row:
    """A normalised row for `table`, in that table's column order (TRADE_COLUMNS / PARTIAL_EXIT_COLUMNS)."""

    table: str
    key: str
    values: tuple[Any, ...]
    variant: str
    position: str
    first_time: dt.datetime | None
    last_time: dt.datetime | None
    size: int = 0
    text: bytes | None = None  # the record's JSON text, for quarantine should PostgreSQL refuse the row


@dataclass(slots=True)
class Merged:
    """An input row whose whole content travels in another row (an OPEN event paired with its CLOSE)."""

    position: str
    variant: str
    size: int = 0


Outcome = Row | Rejected | Merged


def safe_text(data: bytes | str) -> str:
    """Text PostgreSQL can store: undecodable bytes and NUL characters become visible escapes."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
