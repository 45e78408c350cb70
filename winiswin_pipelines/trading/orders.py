"""Client order ids derived from trades, and the entries sent but not yet known to be recorded.

Every order a live session sends carries a client id derived from its trade: `newClientOrderId`
for the entry and the closing MARKET orders, `clientAlgoId` for the stop-loss and take-profit
algo orders. The same trade and role always give the same id (Binance allows 36 characters of
`[.A-Z:/a-z0-9_-]`), so after a timeout, a dropped connection or a restart the order is looked up
by that id instead of being sent twice.

`PendingEntries` is a small fsynced JSON file per trading source: an entry is written there
before its order is sent and removed when its trade is closed. A session that starts after a
crash (kill -9 between the order and its recording) looks each one up on the exchange, records
the entries that filled and drops the others, so a position opened by an order whose reply or
recording was lost is neither forgotten nor opened a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
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


class PendingEntries:
    """trade_uid -> what the session knew when it sent the entry (the TradeOpened fields but the fill)."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def add(self, trade_uid: str, details: dict[str, Any]) -> None:
        self._save(self.load() | {trade_uid: details})

    def remove(self, trade_uid: str) -> None:
        entries = self.load()
        if entries.pop(trade_uid, None) is not None:
            self._save(entries)

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        """Write-then-rename with fsync: a crash leaves the old file or the new one, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w") as file:
            json.dump(entries, file, default=str)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
