"""Performance of a list of closed trades: PnL, win rate, number of trades, maximum drawdown.

The equity curve is realised equity: the starting equity plus each trade's net PnL in exit order;
the maximum drawdown is the largest fall from a running peak of that curve, in USDT and as a
fraction of the peak. Costs are reported apart: fees, funding (received > 0, paid < 0) and slippage
(USDT lost against the reference prices); the PnL already holds all three.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class ClosedTradeLike(Protocol):
    exit_time: object
    pnl: float
    fees: float
    exit_reason: str
    funding: float
    slippage: float


@dataclass(frozen=True)
class Performance:
    trades: int
    wins: int
    win_rate: float | None  # None without trades
    pnl: float
    fees: float
    funding: float
    slippage: float
    return_pct: float
    max_drawdown: float
    max_drawdown_pct: float
    exit_reasons: dict[str, int]


def summarize(closed: Sequence[ClosedTradeLike], starting_equity: float) -> Performance:
    ordered = sorted(closed, key=lambda trade: trade.exit_time)
    equity = peak = starting_equity
    max_drawdown = max_drawdown_pct = 0.0
    for trade in ordered:
        equity += trade.pnl
        peak = max(peak, equity)
        if peak - equity > max_drawdown:
            max_drawdown, max_drawdown_pct = peak - equity, (peak - equity) / peak
    wins = sum(trade.pnl > 0 for trade in ordered)
    pnl = sum((trade.pnl for trade in ordered), 0.0)  # a float also when there is no trade
    return Performance(
        trades=len(ordered), wins=wins, win_rate=wins / len(ordered) if ordered else None, pnl=pnl,
        fees=sum((trade.fees for trade in ordered), 0.0), funding=sum((trade.funding for trade in ordered), 0.0),
        slippage=sum((trade.slippage for trade in ordered), 0.0), return_pct=pnl / starting_equity,
        max_drawdown=max_drawdown, max_drawdown_pct=max_drawdown_pct,
        exit_reasons=dict(sorted(Counter(trade.exit_reason for trade in ordered).items())),
    )
