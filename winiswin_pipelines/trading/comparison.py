"""Backtest variants side by side (rules only against model-gated, one profile against another).

Sharpe is of daily returns on realised equity: each UTC day's closed PnL over the equity at its
start, every replayed day counted (a day without trades returns 0), annualised with sqrt(365)
(crypto trades every day). None with fewer than two days or no variation.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from winiswin_pipelines.trading.performance import ClosedTradeLike, Performance, summarize


@dataclass(frozen=True)
class VariantResult:
    name: str
    performance: Performance
    sharpe: float | None


def daily_sharpe(closed: Sequence[ClosedTradeLike], starting_equity: float, days: Sequence[dt.date]) -> float | None:
    pnl_by_day = dict.fromkeys(days, 0.0)
    for trade in closed:
        day = trade.exit_time.astimezone(dt.UTC).date()
        pnl_by_day[day] = pnl_by_day.get(day, 0.0) + trade.pnl
    equity, returns = starting_equity, []
    for day in sorted(pnl_by_day):
        returns.append(pnl_by_day[day] / equity if equity > 0 else 0.0)
        equity += pnl_by_day[day]
    if len(returns) < 2:
        return None
    mean = sum(returns) / len(returns)
    deviation = math.sqrt(sum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    return mean / deviation * math.sqrt(365) if deviation > 0 else None


def variant(name: str, closed: Sequence[ClosedTradeLike], starting_equity: float,
            days: Sequence[dt.date]) -> VariantResult:
    return VariantResult(name, summarize(closed, starting_equity), daily_sharpe(closed, starting_equity, days))


def comparison_table(variants: Sequence[VariantResult]) -> str:
    """A Markdown table, one column per variant."""
    rows = {
        "trades": lambda v: f"{v.performance.trades}",
        "win rate": lambda v: "n/a" if v.performance.win_rate is None else f"{v.performance.win_rate:.1%}",
        "PnL after fees (USDT)": lambda v: f"{v.performance.pnl:+,.2f}",
        "return": lambda v: f"{v.performance.return_pct:+.2%}",
        "fees (USDT)": lambda v: f"{v.performance.fees:,.2f}",
        "max drawdown (USDT)": lambda v: f"{v.performance.max_drawdown:,.2f}",
        "max drawdown": lambda v: f"{v.performance.max_drawdown_pct:.2%}",
        "Sharpe (daily, annualised)": lambda v: "n/a" if v.sharpe is None else f"{v.sharpe:.2f}",
    }
    lines = ["| | " + " | ".join(v.name for v in variants) + " |", "|---|" + "---:|" * len(variants)]
    lines += [f"| {label} | " + " | ".join(cell(v) for v in variants) + " |" for label, cell in rows.items()]
    return "\n".join(lines)
