"""Which legacy record variant a JSON record is, from its keys (legacy-system.md §2.1, §2.2)."""

from __future__ import annotations

from typing import Any

# winiswin2 JSONL trade records (data/trades.json, data/trades.jsonl, rotated .jsonl.gz).
A0, A1, B, B_PRIME, C, D = "A0", "A1", "B", "B'", "C", "D"
PENDING = "pending"  # TradeRecorder's data/ml_pending_entries.json (JSON array)
PENDING_D = "pending-D"  # EnhancedTradeRecorder's data/pending_entries.json
PARTIAL_EXIT = "partial-exit"  # data/partial_exits.json
VIRTUAL_POSITION = "virtual-position"  # data/virtual_positions.json
SIBLING_LOG = "sibling-log"  # sibling data/trades.json (JSON array of log_trade rows)
SIBLING_LOG_PAIR = "sibling-log-pair"  # its ENTRY row + the EXIT row that closed it (one trade)
SIBLING_PAIRED = "sibling-paired"  # sibling ml_training_data.json (entry + exit)
SIBLING_ENTRY = "sibling-entry"  # sibling ml_pending_entries.json (object keyed by trade_id)
COMPETITION_LOG = "signal-competition"  # data/signal_competitions.jsonl: not trades

NOT_TRADES = frozenset({COMPETITION_LOG})


def classify(record: Any) -> str | None:
    """The variant of one JSON record, or None when its shape is unknown."""
    if not isinstance(record, dict):
        return None
    if "rsi_entry" in record:  # first: the common A1 line needs one lookup
        return A1
    if "is_partial" in record or "partial_close_type" in record or "closed_quantity" in record:
        return PARTIAL_EXIT
    if "signal_features" in record:
        return SIBLING_PAIRED if record.get("exit") is not None else SIBLING_ENTRY
    if "timeframes" in record or "original_signal" in record:
        return PENDING
    if "order_blocks_count_legacy" in record:
        return B_PRIME
    if "structure_integrity" in record or "timeframe_convergence" in record:
        return C
    if "latency_zscore" in record or "support_strength" in record:
        return B
    if "close_reason" in record and "confidence_score" in record:
        return A0
    if "current_pnl" in record or ("expiry" in record and "rank" in record):
        return VIRTUAL_POSITION
    if "hold_duration_seconds" in record or ("reason" in record and "exit_price" in record and "direction" in record):
        return D
    if "entry_id" in record and "symbol" in record:
        return PENDING_D
    if "pnl_percent" in record and "side" in record:
        return SIBLING_LOG
    if "all_signals" in record or "best_signal" in record:
        return COMPETITION_LOG
    return None


def is_sibling_exit(record: dict[str, Any]) -> bool:
    """A sibling log_trade row that closes a position: it has an exit price or says EXIT/CLOSE."""
    return record.get("exit_price") is not None or str(record.get("type", "")).upper() in ("EXIT", "CLOSE")


def is_trade_variant(variant: str | None) -> bool:
    return variant is not None and variant not in NOT_TRADES
