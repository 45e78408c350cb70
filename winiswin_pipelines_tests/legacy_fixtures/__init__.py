"""Legacy stores generated from the field lists in legacy-system.md §2, corrupt inputs included.

`write_legacy_folder(root)` lays out a legacy bot folder with every store and variant, and returns
what a correct migration must find in it (`Expected`).
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

A1_INDICATORS = {
    "rsi_entry": 58.2, "macd_entry": 12.4, "macd_signal_entry": 9.8, "macd_histogram_entry": 2.6,
    "atr_entry": 180.3, "bb_upper_entry": 67400.0, "bb_middle_entry": 66900.0, "bb_lower_entry": 66400.0,
    "bb_width_pct": 0.0149, "volume_sma_ratio": 1.31, "price_vs_ema50": 0.0042, "price_vs_ema200": 0.0113,
}


def a0(trade_id: str = "ETHUSDT_1761400000.100000", **overrides) -> dict:
    """Variant A0: the flat TradeRecorder record without the 12 indicator fields."""
    record = {
        "symbol": "ETHUSDT", "direction": "SHORT", "entry_price": 3950.5, "exit_price": 3901.0,
        "entry_timestamp": "2025-10-25T08:20:00.100000", "exit_timestamp": "2025-10-25T09:00:00.500000",
        "hold_duration_hours": 0.67, "confidence_score": 0.61, "leverage": 3, "position_value": 80.0,
        "pnl": 1.0, "pnl_pct": 0.0125, "is_winner": True, "close_reason": "TAKE_PROFIT", "trend_1h": "bearish",
        "trend_15m": "bearish", "trend_5m": "neutral", "market_structure": "bearish", "order_blocks_count": 1,
        "liquidity_zones_count": 0, "stop_loss": 4000.0, "take_profit": 3880.0, "risk_reward_ratio": 1.4,
        "max_favorable_excursion": 0, "max_adverse_excursion": 0, "trade_id": trade_id,
        "recorded_at": "2025-10-25T09:00:00.600000",
    }
    record.update(overrides)
    return record


def a1(trade_id: str = "BTCUSDT_1761467469.637214", **overrides) -> dict:
    """Variant A1: the illustrative 39-key line of legacy-system.md §2.1."""
    record = a0(
        trade_id, symbol="BTCUSDT", direction="LONG", entry_price=67010.5, exit_price=67512.0,
        entry_timestamp="2025-10-26T08:31:09.637214", exit_timestamp="2025-10-26T10:02:11.120034",
        hold_duration_hours=1.517, confidence_score=0.72, leverage=5, position_value=120.0, pnl=0.9,
        pnl_pct=0.0075, stop_loss=66510.0, take_profit=67760.0, recorded_at="2025-10-26T10:02:11.121500",
    )
    record.update(A1_INDICATORS)
    record.update(overrides)
    return record


def _metadata(trade_id: str, symbol: str, direction: str) -> dict:
    return {
        "symbol": symbol, "direction": direction, "entry_price": 2.51, "exit_price": 2.47,
        "entry_timestamp": "2025-10-30T11:00:00.000001", "exit_timestamp": "2025-10-30T12:30:00.000002",
        "hold_duration_hours": 1.5, "hold_duration_sec": 5400, "confidence_score": 0.55, "pnl": -0.8,
        "pnl_pct": -0.016, "is_winner": False, "close_reason": "STOP_LOSS", "trade_id": trade_id,
        "recorded_at": "2025-10-30T12:30:00.1", "label": 0, "latency_ms": 42, "server_timestamp": 1761825000000,
        "local_timestamp": 1761825000040, "websocket_shard_id": 2,
    }


_B_BASE = {
    "confidence": 0.55, "leverage": 4, "position_value": 50.0, "risk_reward_ratio": 1.5, "order_blocks_count": 2,
    "liquidity_zones_count": 1, "entry_price": 2.51, "win_probability": 0.58, "rsi": 44.0, "macd": -0.01,
    "macd_signal": -0.008, "macd_histogram": -0.002, "atr": 0.03, "bb_width": 0.02, "volume_sma_ratio": 1.1,
    "ema50": 0, "ema200": 0, "volatility_24h": 0, "trend_1h": -1, "trend_15m": -1, "trend_5m": 0,
    "market_structure": -1, "direction": -1, "trend_alignment": 0.67, "ema50_slope": 0, "ema200_slope": 0,
    "higher_highs": 0, "lower_lows": 0, "support_strength": 0.5, "resistance_strength": 0.5, "fvg_count": 0,
    "swing_high_distance": 0, "swing_low_distance": 0, "volume_profile": 0.5, "price_momentum": 0, "order_flow": 0,
    "liquidity_grab": 0, "institutional_candle": 0, "competition_rank": 1, "score_gap_to_best": 0.0,
    "num_competing_signals": 3, "latency_zscore": 0.4, "shard_load": 0.3, "timestamp_consistency": 1,
}
_ICT = {
    "market_structure": 0, "order_blocks_count": 0, "institutional_candle": 0, "liquidity_grab": 0, "order_flow": 0.0,
    "fvg_count": 0, "trend_alignment_enhanced": 0.0, "swing_high_distance": 0.0, "structure_integrity": 0.3,
    "institutional_participation": 0.0, "timeframe_convergence": 1.0, "liquidity_context": 0.0,
}
_B_PRIME_RENAMED = ("order_blocks_count", "market_structure", "fvg_count", "swing_high_distance", "order_flow",
                    "liquidity_grab", "institutional_candle")


def b(trade_id: str = "XRPUSDT_1761822000.000001") -> dict:
    """Variant B: 38 base + 3 competition + 3 websocket features, then the metadata keys."""
    return {**_B_BASE, **_metadata(trade_id, "XRPUSDT", "SHORT")}


def b_prime(trade_id: str = "XRPUSDT_1762084000.000001") -> dict:
    """Variant B': B with seven base keys renamed *_legacy, plus the 12 ICT keys of C."""
    base = {(f"{k}_legacy" if k in _B_PRIME_RENAMED else k): value for k, value in _B_BASE.items()}
    return {**base, **_ICT, **_metadata(trade_id, "XRPUSDT", "SHORT")}


def c(trade_id: str = "SOLUSDT_1762200000.000001") -> dict:
    """Variant C: the 12 pure ICT/SMC features + the metadata keys (no leverage, no win_probability)."""
    return {**_ICT, **_metadata(trade_id, "SOLUSDT", "LONG")}


def d(entry_id: str = "BNBUSDT_1762350000.5") -> dict:
    """Variant D: EnhancedTradeRecorder's flat merge of entry and exit, with `reason`."""
    return {
        "entry_id": entry_id, "symbol": "BNBUSDT", "direction": "LONG", "entry_price": 1010.0, "quantity": 0.05,
        "confidence": 0.66, "win_probability": 0.61, "leverage": 2, "entry_timestamp": "2025-11-05T23:40:00.000001",
        "exit_price": 1030.0, "pnl": 1.0, "pnl_pct": 0.0198, "exit_timestamp": "2025-11-06T01:40:00.000001",
        "reason": "time_based_stop_loss", "hold_duration_seconds": 7200,
    }


def pending_entry(entry_id: str, symbol: str = "BTCUSDT", direction: str = "LONG") -> dict:
    """TradeRecorder's pending entry (data/ml_pending_entries.json, a JSON array)."""
    return {
        "entry_id": entry_id, "symbol": symbol, "direction": direction, "entry_price": 67010.5,
        "entry_timestamp": "2025-10-26T08:31:09.637214", "confidence": 0.72, "win_probability": 0.6,
        "leverage": 5, "position_value": 120.0, "timeframes": {"1h": "bullish", "15m": "bullish", "5m": "neutral"},
        "market_structure": "bullish", "order_blocks": 2, "liquidity_zones": 1, "indicators": A1_INDICATORS,
        "original_signal": {"symbol": symbol, "timestamp": "2025-10-26T08:31:09"}, "competition_rank": 1,
        "score_gap_to_best": 0.0, "num_competing_signals": 2, "latency_ms": 30, "server_timestamp": 1761467469000,
        "local_timestamp": 1761467469030, "websocket_shard_id": 0,
    }


def pending_d(entry_id: str = "ADAUSDT_1762380000.1") -> dict:
    return {
        "entry_id": entry_id, "symbol": "ADAUSDT", "direction": "SHORT", "entry_price": 0.61, "quantity": 150.0,
        "confidence": 0.7, "win_probability": 0.62, "leverage": 3, "entry_timestamp": "2025-11-06T08:00:00.000001",
    }


def partial_exit(symbol: str = "BTCUSDT", at: str = "2025-11-01T10:00:00.000001") -> dict:
    return {
        "symbol": symbol, "direction": "LONG", "exit_price": 70100.0, "closed_quantity": 0.001, "reason": "60pct_profit",
        "pnl": 1.2, "pnl_pct": 0.6, "trigger_pnl_pct": 0.6, "risk_amount": 2.0, "exit_timestamp": at,
        "is_partial": True, "partial_close_type": "60pct_profit",
    }


def virtual_position(symbol: str, closed: bool) -> dict:
    """VirtualPositionManager's record: `current_pnl` in percent, `pnl_pct` = current_pnl / 100 (a fraction)."""
    return {
        "symbol": symbol, "direction": "SHORT", "entry_price": 150.0, "stop_loss": 153.0, "take_profit": 142.5,
        "confidence": 0.52, "rank": 2, "entry_timestamp": "2025-10-27T06:00:00.000001", "expiry": 96,
        "status": "closed" if closed else "active", "current_price": 142.4 if closed else 149.0,
        "current_pnl": 5.07 if closed else 0.67, "max_pnl": 5.1, "min_pnl": -0.4, "market_structure": "bearish",
        "order_blocks": 1, "liquidity_zones": 0, "rsi": 61.0, "macd": 0.2, "atr": 1.1,
        "close_timestamp": "2025-10-27T09:00:00.000001" if closed else None,
        "close_reason": "TAKE_PROFIT" if closed else None, "leverage": 1, "pnl_pct": 0.0507 if closed else None,
        "is_closed": closed, "signal_id": f"{symbol}_sig_1761544800", "_last_update": 1761555600.0,
    }


def sibling_log(side: str, exit_price: float | None, at: str) -> dict:
    return {
        "timestamp": at, "symbol": "BTC/USDT", "type": "EXIT" if exit_price else "ENTRY", "side": side,
        "entry_price": 108000.0, "exit_price": exit_price, "quantity": 0.002, "stop_loss": 106000.0,
        "take_profit": 112000.0, "pnl": 4.0 if exit_price else None, "pnl_percent": 1.85 if exit_price else None,
        "reason": "TAKE_PROFIT" if exit_price else "ICT signal", "strategy": "ICT_SMC",
    }


def sibling_entry(trade_id: str, side: str = "SELL") -> dict:
    """Sibling ml_pending_entries.json value: an entry record with nested signal_features (confidence 0..100)."""
    return {
        "trade_id": trade_id, "timestamp": "2025-10-24T10:00:00.000001", "symbol": "ETHUSDT", "side": side,
        "entry_price": 3900.0, "quantity": 0.05, "stop_loss": 3980.0, "take_profit": 3780.0, "leverage": 10.0,
        "margin": 19.5, "margin_percent": 5.0, "is_virtual": True,
        "signal_features": {"confidence": 72.5, "expected_roi": 3.0, "strategy": "ICT_SMC", "reason": "OB retest",
                            "market_structure": "bearish", "rsi": 61.0},
        "entry_klines": [{"time": 1761300000000, "open": 3901.0, "high": 3910.0, "low": 3890.0, "close": 3900.0,
                          "volume": 120.0}],
    }


def sibling_paired(trade_id: str) -> dict:
    entry = sibling_entry(trade_id, side="BUY")
    entry["exit"] = {
        "trade_id": trade_id, "timestamp": "2025-10-24T11:00:00.000001", "exit_price": 3780.0,
        "exit_reason": "STOP_LOSS", "pnl": -6.0, "pnl_percent": -3.08, "holding_duration_minutes": 60.0,
        "is_virtual": True, "kline_history": [], "exit_features": {"rsi": 40.0},
        "ml_label": {"outcome": "LOSS", "pnl_percent": -3.08, "max_favorable_excursion": 0.1,
                     "max_adverse_excursion": 3.2, "hit_take_profit": False, "hit_stop_loss": True},
    }
    entry.update(ml_ready=True, created_at="2025-10-24T11:00:00.100000")
    return entry


POSITIONS_HEADER = (
    "event,timestamp,position_id,is_virtual,symbol,direction,entry_price,exit_price,stop_loss,take_profit,quantity,"
    "leverage,confidence,pnl,pnl_pct,close_reason,won,trend_alignment_score,market_structure_score,"
    "price_position_score,momentum_score,volatility_score,rsi,macd,atr,bb_width_pct,order_blocks_count,"
    "liquidity_zones_count,holding_duration_minutes"
)


_POSITION_SCORES = "0.5,0.6,0.7,0.4,0.9,55.0,1.2,300.0,40.0,2,1"


def mismatched_positions_csv(folder: Path) -> Path:
    """POS_0009 opens on SOLUSDT and closes on BTCUSDT; POS_0010 opens and closes on ETHUSDT."""
    rows = [
        POSITIONS_HEADER,
        f"OPEN,2025-10-26 10:00:00,POS_0009,False,SOLUSDT,LONG,190.0,,185.0,200.0,1.0,3,0.8,,,,,{_POSITION_SCORES},",
        f"CLOSE,2025-10-26 12:00:00,POS_0009,False,BTCUSDT,LONG,67000.0,68000.0,66000.0,69000.0,0.01,10,0.7,10.0,1.49,"
        f"TAKE_PROFIT,True,{_POSITION_SCORES},120.0",
        f"OPEN,2025-10-26 13:00:00,POS_0010,False,ETHUSDT,SHORT,3900.0,,3950.0,3800.0,0.1,5,0.6,,,,,{_POSITION_SCORES},",
        f"CLOSE,2025-10-26 15:00:00,POS_0010,False,ETH/USDT,SHORT,3900.0,3850.0,3950.0,3800.0,0.1,5,0.6,5.0,1.28,"
        f"TAKE_PROFIT,True,{_POSITION_SCORES},120.0",
    ]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "positions.csv").write_text("\n".join(rows) + "\n")
    return folder


def _jsonl(records: list) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


@dataclass
class Expected:
    """What a correct migration of the generated folder finds, per store (relpath); `variants` counts
    the records of each variant that migrate."""

    stores: dict[str, dict] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    quarantine_reasons: dict[tuple[str, str], str] = field(default_factory=dict)


def write_legacy_folder(root: Path) -> Expected:
    expected = Expected()
    data = root / "data"
    data.mkdir(parents=True)

    # winiswin2 data/trades.json: JSON lines despite the name (A0 and A1, a rebuilt and a virtual close).
    trades_json = [a0(), a1(), a1("REBUILT_DOGEUSDT_1761470000", symbol="DOGEUSDT"),
                   a1("LINKUSDT_1761471000.5", symbol="LINKUSDT", pnl=0.012, pnl_pct=0.012)]
    (data / "trades.json").write_bytes(_jsonl(trades_json))
    expected.stores["data/trades.json"] = {"format": "jsonl", "read": 4, "migrated": 4, "quarantined": 0,
                                           "variants": {"A0": 1, "A1": 3}}

    # data/trades.jsonl: B, B', C, D, a duplicate of an A1 line from trades.json, and corrupt lines.
    good = [b(), b_prime(), c(), d(), a1(), d()]  # a1(): same trade as in trades.json; d() twice in this file
    corrupt = [
        (b'{"symbol": "BTCUSDT", "direction": "LONG", "entry_pri', "invalid or truncated JSON"),
        (json.dumps(a1("NAN_1")).replace('"pnl": 0.9', '"pnl": NaN').encode(), "NaN or Infinity"),
        (json.dumps(a1("INF_1")).replace('"pnl": 0.9', '"pnl": Infinity').encode(), "NaN or Infinity"),
        (b"", "empty line"),
        (b'{"symbol": "BTCUSDT", "note": "caf\xe9"}', "bad encoding"),
        (b'["not", "an", "object"]', "not a JSON object"),
        (json.dumps({"foo": 1, "bar": 2}).encode(), "unknown record variant"),
        (json.dumps(a1("WRONG_TYPE_1", entry_price="sixty thousand")).encode(), "entry_price: expected a number"),
        (json.dumps(a1("WRONG_SYMBOL_1", symbol=12345)).encode(), "symbol: missing or not a string"),
        (json.dumps(a1("NUL_1", close_reason="a\u0000b")).encode(), "\\u0000"),
    ]
    lines = [json.dumps(r).encode() for r in good[:3]] + [b"\xef\xbb\xbf" + json.dumps(good[3]).encode()]
    lines += [json.dumps(r).encode() for r in good[4:]] + [line for line, _ in corrupt]
    (data / "trades.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    for number, (_, reason) in enumerate(corrupt, start=len(good) + 1):
        expected.quarantine_reasons[("legacy:data/trades.jsonl", f"line {number}")] = reason
    expected.stores["data/trades.jsonl"] = {
        "format": "jsonl", "read": len(good) + len(corrupt), "migrated": len(good), "quarantined": len(corrupt),
        "variants": {"B": 1, "B'": 1, "C": 1, "D": 2, "A1": 1},
    }

    # a rotated file: gzip of JSON lines, with the C record again (duplicate across files).
    with gzip.open(data / "trades_20251104_120000.jsonl.gz", "wb") as gz:
        gz.write(_jsonl([c(), c("SOLUSDT_1762300000.000002")]))
    expected.stores["data/trades_20251104_120000.jsonl.gz"] = {"format": "jsonl.gz", "read": 2, "migrated": 2,
                                                               "quarantined": 0, "variants": {"C": 2}}

    # pending entries: one was later closed (its id is the A1 trade_id), one never was.
    (data / "ml_pending_entries.json").write_text(json.dumps(
        [pending_entry("BTCUSDT_1761467469.637214"), pending_entry("ETHUSDT_1761500000.25", "ETHUSDT", "SHORT")],
        indent=2))
    expected.stores["data/ml_pending_entries.json"] = {"format": "json-array", "read": 2, "migrated": 2,
                                                       "quarantined": 0, "variants": {"pending": 2}}
    (data / "pending_entries.json").write_text(json.dumps([pending_d()]))
    expected.stores["data/pending_entries.json"] = {"format": "json-array", "read": 1, "migrated": 1,
                                                    "quarantined": 0, "variants": {"pending-D": 1}}
    (data / "partial_exits.json").write_text(json.dumps([partial_exit(), partial_exit("ETHUSDT", "2025-11-02T10:00:00")]))
    expected.stores["data/partial_exits.json"] = {"format": "json-array", "read": 2, "migrated": 2,
                                                  "quarantined": 0, "variants": {"partial-exit": 2}}
    (data / "virtual_positions.json").write_text(json.dumps(
        {"SOLUSDT": virtual_position("SOLUSDT", closed=False), "AVAXUSDT": virtual_position("AVAXUSDT", closed=True)},
        indent=2))
    expected.stores["data/virtual_positions.json"] = {"format": "json-object", "read": 2, "migrated": 2,
                                                      "quarantined": 0, "variants": {"virtual-position": 2}}
    # not trades: one line per scan cycle
    (data / "signal_competitions.jsonl").write_bytes(_jsonl([{
        "timestamp": 1761467469.1, "total_signals": 2, "best_signal": {"symbol": "BTCUSDT", "score": 0.8, "details": {}},
        "all_signals": [{"symbol": "BTCUSDT", "score": 0.8, "confidence": 0.7, "win_rate": 0.6, "rr_ratio": 1.5}],
    }]))
    expected.skipped.add("data/signal_competitions.jsonl")
    (data / "logs").mkdir()
    (data / "logs" / "trading_bot.log").write_text("2025-10-26 08:31:09 INFO started\n")
    expected.skipped.add("data/logs/trading_bot.log")

    # sibling repo: data/trades.json is a JSON ARRAY there (same name, other format), with a damaged tail.
    sibling = root / "sibling"
    (sibling / "data").mkdir(parents=True)
    rows = [sibling_log("BUY", None, "2025-10-23T09:00:00.000001"), sibling_log("BUY", 110000.0, "2025-10-23T12:00:00.5")]
    text = json.dumps(rows, indent=2)
    (sibling / "data" / "trades.json").write_text(text[:-2] + ',\n  {"timestamp": "2025-10-23T13:00:00", "symb')
    # its ENTRY and EXIT rows are one trade
    expected.stores["sibling/data/trades.json"] = {"format": "json-array", "read": 3, "migrated": 1,
                                                   "quarantined": 1, "variants": {"sibling-log-pair": 1}}
    expected.quarantine_reasons[("legacy:sibling/data/trades.json", "item 2 to end")] = "truncated or invalid JSON"
    (sibling / "ml_training_data.json").write_text(json.dumps([sibling_paired("ETHUSDT_20251024_100000")], indent=2))
    expected.stores["sibling/ml_training_data.json"] = {"format": "json-array", "read": 1, "migrated": 1,
                                                        "quarantined": 0, "variants": {"sibling-paired": 1}}
    (sibling / "ml_pending_entries.json").write_text(json.dumps(
        {"ETHUSDT_20251024_120000": sibling_entry("ETHUSDT_20251024_120000")}, indent=2))
    expected.stores["sibling/ml_pending_entries.json"] = {"format": "json-object", "read": 1, "migrated": 1,
                                                          "quarantined": 0, "variants": {"sibling-entry": 1}}

    _write_positions_csv(root / "ml_data", expected)
    _write_sqlite_v2(root / "trading_data.db")
    expected.stores["trading_data.db"] = {"format": "sqlite", "read": 3, "migrated": 3, "quarantined": 0,
                                          "variants": {"sqlite-v2": 2, "sqlite-v2-current": 1}}
    broken = root / "broken"
    broken.mkdir()
    (broken / "trading_data.db").write_bytes(b"SQLite format 3\x00" + b"\x00\x10garbage" * 200)
    expected.stores["broken/trading_data.db"] = {"format": "sqlite", "read": 1, "migrated": 0, "quarantined": 1,
                                                 "variants": {}}
    expected.quarantine_reasons[("legacy:broken/trading_data.db", "file")] = "corrupt SQLite database"
    return expected


def _write_positions_csv(folder: Path, expected: Expected) -> None:
    """ml_data/positions.csv: header, OPEN/CLOSE pairs, a later header-less flush of OPEN-only rows
    (fewer columns: DataArchiver appended with header=False), and a misaligned row."""
    folder.mkdir()
    scores = "0.5,0.6,0.7,0.4,0.9,55.0,1.2,300.0,40.0,2,1"
    rows = [
        POSITIONS_HEADER,
        f"OPEN,2025-10-26 10:00:00,POS_0000,False,BTCUSDT,LONG,67000.0,,66000.0,69000.0,0.01,10,0.7,,,,,{scores},",
        f"CLOSE,2025-10-26 12:00:00,POS_0000,False,BTCUSDT,LONG,67000.0,68000.0,66000.0,69000.0,0.01,10,0.7,10.0,1.49,"
        f"TAKE_PROFIT,True,{scores},120.0",
        f"OPEN,2025-10-26 11:00:00,POS_0001,True,ETH/USDT,SHORT,3900.0,,3950.0,3800.0,0.1,5,0.6,,,,,{scores},",
        # the flush that held only OPEN events: 23 columns, no exit_price/pnl/pnl_pct/close_reason/won/holding
        f"open,2025-10-26 13:00:00,POS_0000,False,SOLUSDT,LONG,190.0,185.0,200.0,1.0,3,0.8,{scores}",
        "CLOSE,2025-10-26 14:00:00,POS_0002,False,BNBUSDT",  # misaligned: 5 fields
        f"CLOSE,2025-10-26 15:00:00,POS_0001,True,ETH/USDT,SHORT,3900.0,3850.0,3950.0,3800.0,0.1,5,0.6,5.0,1.28,"
        f"TAKE_PROFIT,True,{scores},240.0",
    ]
    (folder / "positions.csv").write_text("\n".join(rows) + "\n")
    expected.stores["ml_data/positions.csv"] = {"format": "positions-csv", "read": 6, "migrated": 3, "quarantined": 1,
                                                "variants": {"positions-pair": 2, "positions-open": 1}}
    expected.quarantine_reasons[("legacy:ml_data/positions.csv", "line 6")] = "misaligned row"


def _write_sqlite_v2(path: Path) -> None:
    """trading_data.db in schema v2 (trade_uid, current_positions), per legacy-system.md §2.4."""
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE trade_history (id INTEGER PRIMARY KEY AUTOINCREMENT, trade_uid TEXT UNIQUE NOT NULL,
              symbol TEXT NOT NULL, direction TEXT NOT NULL, entry_price REAL NOT NULL, exit_price REAL,
              position_size REAL NOT NULL, pnl REAL, pnl_percentage REAL, commission REAL DEFAULT 0,
              funding_rate REAL DEFAULT 0, entry_time TIMESTAMP NOT NULL, exit_time TIMESTAMP,
              hold_duration INTEGER, confidence REAL, win_probability REAL, risk_reward_ratio REAL,
              status TEXT DEFAULT 'OPEN', exit_reason TEXT, strategy_version TEXT, market_conditions TEXT,
              tags TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
            CREATE TABLE current_positions (id INTEGER PRIMARY KEY AUTOINCREMENT, trade_uid TEXT UNIQUE NOT NULL,
              symbol TEXT UNIQUE NOT NULL, direction TEXT NOT NULL, entry_price REAL NOT NULL, current_price REAL,
              position_size REAL NOT NULL, unrealized_pnl REAL, unrealized_pnl_percentage REAL, margin_used REAL,
              leverage REAL, entry_time TIMESTAMP NOT NULL, confidence REAL, win_probability REAL,
              stop_loss_price REAL, take_profit_price REAL, risk_reward_ratio REAL,
              created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
            CREATE TABLE db_version (version INTEGER PRIMARY KEY, migrated_at TIMESTAMP);
        """)
        conn.execute(
            "INSERT INTO trade_history (trade_uid, symbol, direction, entry_price, exit_price, position_size, pnl, "
            "pnl_percentage, commission, entry_time, exit_time, confidence, win_probability, status, exit_reason, "
            "strategy_version, market_conditions) VALUES ('a1b2c3d4e5f60718', 'BTCUSDT', 'LONG', 69000.0, 69500.0, "
            "0.002, 1.0, 0.72, 0.05, '2025-11-04 10:00:00.123456', '2025-11-04 11:00:00', 0.68, 0.62, 'CLOSED', "
            "'TAKE_PROFIT', 'v3.23', '{\"websocket_metadata\": {}}')"
        )
        conn.execute(
            "INSERT INTO trade_history (trade_uid, symbol, direction, entry_price, position_size, entry_time, confidence, "
            "win_probability, status) VALUES ('ffee0011aabb2233', 'ETHUSDT', 'SHORT', 3500.0, 0.05, "
            "'2025-11-05 09:00:00', 0.71, 0.64, 'OPEN')"
        )
        conn.execute(
            "INSERT INTO current_positions (trade_uid, symbol, direction, entry_price, position_size, leverage, "
            "entry_time, confidence, win_probability, stop_loss_price, take_profit_price) VALUES ('ffee0011aabb2233', "
            "'ETHUSDT', 'SHORT', 3500.0, 0.05, 4, '2025-11-05 09:00:00', 0.71, 0.64, 3560.0, 3410.0)"
        )


def mixed_a1_jsonl(path: Path, plain: int = 300) -> Path:
    """A1 JSON lines as the A1-era recorder wrote them (`plain` of them), with every kind of odd line
    among them: fields missing or of another type, values out of range, duplicates (in one block and
    across blocks), lines that do not parse, other variants, and a last line without its newline."""
    odd = [
        json.dumps(a1("DUPUSDT_1.0", symbol="ETHUSDT")),  # repeated further down: the later one wins
        json.dumps(a1("DUPADJ_1.0")) + "\n" + json.dumps(a1("DUPADJ_1.0", pnl=3.0)),  # twice in a row
        json.dumps(a1("COMPACT_1.0"), separators=(",", ":")),
        json.dumps({k: v for k, v in a1("NOID").items() if k != "trade_id"}),  # content uid
        json.dumps({k: v for k, v in a1("NOSYMBOL_1.0").items() if k != "symbol"}),  # quarantined
        json.dumps({k: v for k, v in a1("NORSI_1.0").items() if k != "rsi_entry"}),  # variant A0
        json.dumps({k: v for k, v in a1("NOEXIT_1.0").items() if k not in ("exit_timestamp", "exit_price")}),  # OPEN
        json.dumps(a1("PRICETEXT_1.0", entry_price="67010.5")),  # a number as text: read record by record
        json.dumps(a1("BOOLLEV_1.0", leverage=True)),  # quarantined: leverage not a number
        json.dumps(a1(12345.5)),  # a numeric trade id
        json.dumps(a1("NUMSIDE_1.0", direction=1)),
        json.dumps(a1("BUY_1.0", direction="BUY", symbol="btc/usdt")),
        json.dumps(a1("NEGPRICE_1.0", stop_loss=-1.0)),  # quarantined
        json.dumps(a1("CONF_1.0", confidence_score=1.5)),  # quarantined: outside 0..1
        json.dumps(a1("BADTIME_1.0", entry_timestamp="yesterday")),  # quarantined
        json.dumps(a1("FEB30_1.0", exit_timestamp="2025-02-30T10:00:00.000001")),  # quarantined: no such day
        json.dumps(a1("SHORTFRAC_1.0", entry_timestamp="2025-10-26T08:31:09.637")),  # fromisoformat reads it
        json.dumps(a1("ZONE_1.0", exit_timestamp="2025-10-26T10:02:11+02:00")),
        json.dumps(a1("EPOCH_1.0", exit_timestamp=1761472931.12)),
        json.dumps(a1("EMPTYTIME_1.0", exit_timestamp="")),
        json.dumps(a1("VIRTUAL_1.0", pnl=0.0075, pnl_pct=0.0075)),  # virtual close inferred
        json.dumps(a1("VIRTUAL0_1.0", pnl=0.0075, pnl_pct=0.0075, position_value=0)),
        json.dumps(a1("REBUILT_BTCUSDT_1.0")),
        json.dumps(a1("NEGLEV_1.0", leverage=-2.5, exit_price=None)),
        json.dumps(a1("NEGZEROPNL_1.0", pnl=-0.0)),
        json.dumps({k: v for k, v in a1("VIRTUALNOVALUE_1.0", pnl=-0.01, pnl_pct=-0.01).items() if k != "position_value"}),
        json.dumps(a1("ZEROSL_1.0", stop_loss=0, take_profit=0.0, exit_price=0)),
        json.dumps(a1("NOCONFSCORE_1.0", confidence_score=None, confidence=0.4)),
        json.dumps({**{k: v for k, v in a1("CONFONLY_1.0").items() if k != "confidence_score"}, "confidence": 0.4}),
        json.dumps(a1("WINPROB_1.0", win_probability=0.61)),
        json.dumps(a1("X" * 130)),  # a uid too long: hashed
        json.dumps(a1("REASON_1.0", close_reason="止损 stop", trend_1h="看涨"), ensure_ascii=False),
        json.dumps(a1("ESCAPED_1.0", close_reason="tab\there \"quoted\"")),
        json.dumps(a1("EMPTYREASON_1.0", close_reason="")),
        json.dumps(a1("NULLS_1.0", leverage=None, pnl=None, take_profit=None)),
        json.dumps(a1("NESTED_1.0", extra={"a": [1, {"b": None}], "c": "d"})),
        json.dumps(partial_exit()),
        json.dumps(b()),
        '{"symbol": "BTCUSDT", "rsi_entry": 1.0, "trade_id": "SPACED_1.0", "direction": "LONG",'
        ' "entry_timestamp": "2025-10-26T08:31:09"}',
        json.dumps(a1("NEGZERO_1.0")).replace('"leverage": 5', '"leverage": -0'),
        json.dumps(a1("BIGINT_1.0", leverage=123456789012345678901234567890)),
        json.dumps(a1("DUPKEY_1.0")).replace('"symbol": "BTCUSDT"', '"symbol": "BTCUSDT", "symbol": "ETHUSDT"'),
        json.dumps(a1("NAN_1.0")).replace('"rsi_entry": 58.2', '"rsi_entry": NaN'),  # quarantined (not JSON)
        json.dumps(a1("INFIGNORED_1.0")).replace('"max_favorable_excursion": 0', '"max_favorable_excursion": Infinity'),
        json.dumps(a1("NUL_1.0", close_reason="a\u0000b")),  # quarantined: PostgreSQL cannot store \u0000
        json.dumps(a1("TWO_1.0")) + json.dumps(a1("TWO_2.0")),  # two objects on one line: quarantined
        json.dumps(a1("TRUNC_1.0"))[:200],  # quarantined: truncated
        "",  # quarantined: empty line
        "   ",
        "\ufeff" + json.dumps(a1("BOM_1.0")),
        json.dumps(a1("CRLF_1.0")) + "\r",
        json.dumps(a1("LEAD_1.0")).replace("{", " {", 1),
        "[1, 2]",
        json.dumps(a1("DUPUSDT_1.0", symbol="SOLUSDT", pnl=2.5)),
    ]
    lines = [json.dumps(a1(f"BTCUSDT_{1761467469 + i}.{i:06d}", pnl=round(0.1 * i - 2, 4)), separators=(",", ":"))
             for i in range(plain)]
    mixed = []
    for i, line in enumerate(odd):  # one odd line every few plain ones, some next to each other
        mixed += lines[i * plain // len(odd):(i + 1) * plain // len(odd)] + [line]
    mixed.insert(3, json.dumps(a1("DUPUSDT_1.0", symbol="BNBUSDT", pnl=1.5)))  # a duplicate early in the file
    content = "\n".join(mixed).encode("utf-8") + b"\n" + json.dumps(a1("LASTLINE_1.0")).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path
