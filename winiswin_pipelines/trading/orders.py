"""Client order ids derived from trades.

Every order a live session sends carries a client id derived from its trade: `newClientOrderId`
for the entry and the closing MARKET orders, `clientAlgoId` for the stop-loss and take-profit
algo orders. The same trade and role always give the same id (Binance allows 36 characters of
`[.A-Z:/a-z0-9_-]`), so after a timeout, a dropped connection or a restart the order is looked up
by that id instead of being sent twice.

A trade may need more than one order of a role: a close above `MARKET_LOT_SIZE` goes as several
parts, and a stop that expired or was rejected is placed again. Binance wants `clientAlgoId` (like
`newClientOrderId`) unique among open orders; a new id per attempt also keeps every lookup by id
unambiguous (which attempt fired, which one to cancel). Number 0 is the plain id; number n > 0
shares the plain id's first 29 characters (`wn`, the role, `-`, 24 digest digits) and adds `.n`,
so `belongs_to` recognises every one of them as the trade's.

Before an entry is sent, its intent is committed to PostgreSQL (`order_intents`, see
`journal.OrderIntents`), so a session that starts after a crash looks it up by that id.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

CLIENT_ID_PREFIX = "wn"  # every id this project sends starts with it: the others are left alone
ROLES = {"entry": "en", "exit": "ex", "stop_loss": "sl", "take_profit": "tp"}
CLIENT_ID_RULE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")


_STEM = 29  # what every numbered id of a trade and role shares with its plain id
MAX_NUMBER = 999_999  # 29 + "." + 6 digits = 36 characters, Binance's limit


def client_order_id(trade_uid: str, role: str, number: int = 0) -> str:
    """The client id of `trade_uid`'s order of `role` (entry, exit, stop_loss, take_profit): 35 characters;
    with `number` > 0 (a close's part, a protective order's attempt) 31 to 36."""
    digest = hashlib.blake2b(trade_uid.encode(), digest_size=15).hexdigest()
    plain = f"{CLIENT_ID_PREFIX}{ROLES[role]}-{digest}"
    if number == 0:
        return plain
    if not 0 < number <= MAX_NUMBER:
        raise ValueError(f"client id number {number} outside 0..{MAX_NUMBER}")
    return f"{plain[:_STEM]}.{number}"


def belongs_to(client_id: str | None, trade_uid: str, role: str) -> bool:
    """Whether `client_id` is one of `trade_uid`'s ids of `role`, whatever its number."""
    return stem_of(client_id) == client_order_id(trade_uid, role)[:_STEM]


def stem_of(client_id: str | None) -> str | None:
    """What all the numbered ids of one trade and role share (None: not one of our ids): compare stems
    of many ids at once instead of calling `belongs_to` for each pair."""
    if not is_ours(client_id) or len(client_id) < _STEM:
        return None
    rest = client_id[_STEM:]
    plain = len(client_id) == 35 and "." not in client_id
    return client_id[:_STEM] if plain or (rest[:1] == "." and rest[1:].isdigit()) else None


def id_number(client_id: str) -> int:
    """The number of one of our ids (0 for a plain id)."""
    stem, dot, number = client_id.rpartition(".")
    return int(number) if dot and len(stem) == _STEM and number.isdigit() else 0


def is_ours(client_id: str | None) -> bool:
    return bool(client_id) and client_id.startswith(CLIENT_ID_PREFIX) and client_id[2:4] in ROLES.values()


def market_max_quantities(exchange_info: dict[str, Any]) -> dict[str, float]:
    """symbol -> the most one MARKET order may hold (`MARKET_LOT_SIZE` maxQty of an exchangeInfo reply;
    symbols without that filter are left out)."""
    limits = {}
    for entry in exchange_info.get("symbols", []):
        lot = next((f for f in entry.get("filters", []) if f.get("filterType") == "MARKET_LOT_SIZE"), None)
        if lot is not None and float(lot.get("maxQty") or 0) > 0:
            limits[entry["symbol"]] = float(lot["maxQty"])
    return limits
