"""Which trade a legacy partial exit belongs to, from what its record says (pure: no database).

`data/partial_exits.json` rows carry no trade id in the documented format, only symbol, direction
and time; a record that does name its trade (`trade_id` / `entry_id`) is linked by it. Otherwise the
exit is linked to the one real trade of its symbol (and direction) that was held at the exit's
time; with none or several such trades it stays unlinked, and the reason says which.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from winiswin_pipelines.legacy.normalize import RecordError, legacy_uid, side_of

_ID_FIELDS = ("trade_id", "entry_id")


@dataclass(frozen=True)
class PartialExit:
    exit_uid: str
    symbol: str
    exit_time: dt.datetime
    side: str | None  # LONG/SHORT when the record says
    trade_uid: str | None  # the trade the record names, when it names one

    @classmethod
    def from_origin(cls, exit_uid: str, symbol: str, exit_time: dt.datetime, origin: dict[str, Any] | None) -> PartialExit:
        """From the exit's `origin`, which keeps the trade id (`trade_id`) and `direction` its record names."""
        origin = origin or {}
        named = next((str(origin[name]) for name in _ID_FIELDS if origin.get(name)), None)
        try:
            side = side_of(origin["direction"]) if origin.get("direction") else None
        except RecordError:
            side = None
        return cls(exit_uid, symbol, exit_time, side, legacy_uid(named))


@dataclass(frozen=True)
class Link:
    """The trade an exit is linked to (`trade_uid`), or None and the reason it stays unlinked."""

    exit: PartialExit
    trade_uid: str | None
    reason: str

    @property
    def linked(self) -> bool:
        return self.trade_uid is not None


def choose_trade(exit_: PartialExit, named_exists: bool, held: list[tuple[str, str]]) -> Link:
    """`named_exists`: the trade the record names is in `trades`; `held`: (trade_uid, side) of the
    real trades of the exit's symbol open at its time."""
    if exit_.trade_uid:
        if named_exists:
            return Link(exit_, exit_.trade_uid, "by the trade id in the record")
        return Link(exit_, None, f"names trade {exit_.trade_uid}, which is not in the hot trades table")
    candidates = [uid for uid, side in held if exit_.side is None or side == exit_.side]
    what = f"{exit_.symbol}{' ' + exit_.side if exit_.side else ''}"
    at = f"{exit_.exit_time:%Y-%m-%d %H:%M:%S} UTC"
    if len(candidates) == 1:
        return Link(exit_, candidates[0], "by symbol and time window")
    if not candidates:
        return Link(exit_, None, f"no real {what} trade was held at {at}")
    return Link(exit_, None, f"{len(candidates)} real {what} trades were held at {at}: ambiguous")


@dataclass
class LinkSummary:
    """The legacy partial exits after a linking pass: how many are linked, and why the rest are not."""

    linked_now: int = 0
    linked: int = 0
    unlinked: list[Link] | None = None

    def summary_line(self) -> str:
        unlinked = self.unlinked or []
        return (f"partial exits: {self.linked:,} linked to their trade ({self.linked_now:,} by this run), "
                f"{len(unlinked):,} unlinked")

    def unlinked_lines(self) -> list[str]:
        return [f"{link.exit.exit_uid} ({link.exit.symbol} {link.exit.exit_time:%Y-%m-%d %H:%M:%S}): {link.reason}"
                for link in self.unlinked or []]
