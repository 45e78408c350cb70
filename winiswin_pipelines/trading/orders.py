"""Client order ids derived from trades.

Every order a live session sends carries a client id derived from its trade: `newClientOrderId`
for the entry and the closing MARKET orders, `clientAlgoId` for the stop-loss and take-profit
algo orders. The same trade and role always give the same id (Binance allows 36 characters of
`[.A-Z:/a-z0-9_-]`), so after a timeout, a dropped connection or a restart the order is looked up
by that id instead of being sent twice.

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


def client_order_id(trade_uid: str, role: str) -> str:
    """The client id of `trade_uid`'s order of `role` (entry, exit, stop_loss, take_profit): 35 characters."""
    digest = hashlib.blake2b(trade_uid.encode(), digest_size=15).hexdigest()
    return f"{CLIENT_ID_PREFIX}{ROLES[role]}-{digest}"


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
