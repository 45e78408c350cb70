"""Risk rules: stop loss / take profit, position size, open-position limits, the time stop.

Pure arithmetic on floats and datetimes. Defaults follow the legacy bot where it had sound ones
(legacy-system.md §6): stop distance max(2 x ATR, 0.3% of price), take profit at 1.5 x the stop
distance, the 2-hour time stop for every position regardless of PnL; sizing risks a fixed fraction
of equity at the stop, capped by leverage, and refuses orders under Binance's 5 USDT minimum.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

SIDES = ("LONG", "SHORT")


@dataclass(frozen=True)
class RiskConfig:
    starting_equity: float = 10_000.0  # USDT, paper and backtest account
    risk_per_trade: float = 0.01  # fraction of equity lost when the stop is hit
    max_leverage: float = 5.0  # notional <= equity x max_leverage
    max_open_positions: int = 3
    stop_atr_multiple: float = 2.0
    min_stop_pct: float = 0.003
    reward_risk: float = 1.5  # take-profit distance / stop distance
    time_stop: dt.timedelta = dt.timedelta(hours=2)
    min_notional: float = 5.0
    max_symbol_notional: float | None = None  # USDT per position; None: no cap beyond leverage
    max_total_notional: float | None = None  # USDT over all open positions
    daily_loss_limit: float | None = None  # USDT lost since 00:00 UTC (closed trades) after which no entry
    max_drawdown: float | None = None  # fraction of the peak equity lost after which live trading halts


@dataclass
class Position:
    """An open position; `entry_time` is the fill time (from position_entry_times after a restart)."""

    trade_uid: str
    symbol: str
    side: str
    quantity: float
    entry_price: float
    entry_time: dt.datetime
    stop_loss: float
    take_profit: float
    entry_fees: float = 0.0
    funding: float = 0.0  # funding fees received (> 0) or paid (< 0) while held, USDT


def direction(side: str) -> int:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return 1 if side == "LONG" else -1


def stop_levels(side: str, entry_price: float, atr: float, config: RiskConfig) -> tuple[float, float]:
    """(stop_loss, take_profit) for an entry at `entry_price`."""
    distance = max(config.stop_atr_multiple * atr, config.min_stop_pct * entry_price)
    sign = direction(side)
    return entry_price - sign * distance, entry_price + sign * config.reward_risk * distance


def position_size(equity: float, entry_price: float, stop_loss: float, config: RiskConfig) -> float:
    """Quantity risking `risk_per_trade` of equity at the stop, capped by leverage; 0 when too small."""
    stop_distance = abs(entry_price - stop_loss)
    if equity <= 0 or stop_distance <= 0 or entry_price <= 0:
        return 0.0
    quantity = min(equity * config.risk_per_trade / stop_distance, equity * config.max_leverage / entry_price)
    return quantity if quantity * entry_price >= config.min_notional else 0.0


def price_exit(position: Position, low: float, high: float, open_: float | None = None) -> tuple[str, float] | None:
    """("stop_loss" | "take_profit", price) when prices in [low, high] reach a level, else None.

    With a bar, `open_` is its first price: a gap through a level fills at the open. When a bar
    touches both levels the stop wins (the order of highs and lows inside a bar is unknown).
    """
    sign = direction(position.side)
    adverse, favourable = (low, high) if sign > 0 else (high, low)
    if open_ is not None and sign * (open_ - position.stop_loss) <= 0:
        return "stop_loss", open_
    if sign * (adverse - position.stop_loss) <= 0:
        return "stop_loss", position.stop_loss
    if open_ is not None and sign * (open_ - position.take_profit) >= 0:
        return "take_profit", open_
    if sign * (favourable - position.take_profit) >= 0:
        return "take_profit", position.take_profit
    return None


def time_stop_due(entry_time: dt.datetime, now: dt.datetime, config: RiskConfig) -> bool:
    """True once a position has been held for the configured time (2 hours by default)."""
    return now - entry_time >= config.time_stop


def gross_pnl(position: Position, exit_price: float, quantity: float | None = None) -> float:
    """PnL in USDT before fees of closing `quantity` (default: all) at `exit_price`."""
    size = position.quantity if quantity is None else quantity
    return direction(position.side) * (exit_price - position.entry_price) * size


def capped_quantity(quantity: float, price: float, open_positions: dict[str, Position], config: RiskConfig) -> float:
    """`quantity` within the per-position and total notional caps (0 when what is left is too small)."""
    caps = [quantity * price]
    if config.max_symbol_notional is not None:
        caps.append(config.max_symbol_notional)
    if config.max_total_notional is not None:
        held = sum(p.quantity * p.entry_price for p in open_positions.values())
        caps.append(config.max_total_notional - held)
    notional = min(caps)
    return notional / price if notional >= config.min_notional else 0.0


def daily_loss_reached(realised_today: float, config: RiskConfig) -> str | None:
    """Why no entry is allowed after today's realised PnL (USDT, since 00:00 UTC), or None."""
    if config.daily_loss_limit is not None and -realised_today >= config.daily_loss_limit:
        return f"daily loss limit reached: {-realised_today:.2f} USDT lost today (limit {config.daily_loss_limit:g})"
    return None


def drawdown_reached(peak_equity: float | None, equity: float, config: RiskConfig) -> str | None:
    """Why trading halts after equity fell from its peak (USDT), or None."""
    if config.max_drawdown is None or not peak_equity or peak_equity <= 0:
        return None
    drawdown = (peak_equity - equity) / peak_equity
    if drawdown >= config.max_drawdown:
        return (f"max drawdown reached: equity {equity:.2f} USDT is {drawdown:.2%} below its peak {peak_equity:.2f} "
                f"(limit {config.max_drawdown:.2%})")
    return None


def can_open(symbol: str, open_positions: dict[str, Position], config: RiskConfig) -> str | None:
    """Why a new position on `symbol` is refused, or None when it is allowed (one per symbol)."""
    if symbol in open_positions:
        return f"already holding {open_positions[symbol].side} {symbol}"
    if len(open_positions) >= config.max_open_positions:
        return f"max open positions reached ({config.max_open_positions})"
    return None
