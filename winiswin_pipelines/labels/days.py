"""The pipeline's labels of a UTC day, pure: its triple-barrier settings, and the labels of a day's
events from their mid-price path (with the volatility target and the gap rule applied)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from winiswin_pipelines.labels.triple_barrier import get_triple_barrier_label
from winiswin_pipelines.labels.volatility import get_return_vol

# The label columns of `training_features` (and of the training dataset). `label_cost`: the round-trip
# cost a horizontal barrier had to exceed (NULL: labels not net of costs).
LABEL_COLUMNS = ("label", "label_ret", "label_t1", "label_barrier", "label_cost")
# `label_barrier` of an event whose path runs into a gap in the prices before any barrier: no label, ever.
GAP = "gap"


@dataclass(frozen=True)
class RoundTripCost:
    """What a round trip costs, as a fraction of the price: the taker fee on entry and on exit (Binance's
    regular tier: 0.05%) plus a share of the relative spread at the event (half by default)."""

    taker_fee: float = 0.0005
    spread_share: float = 0.5

    def __post_init__(self) -> None:
        if self.taker_fee < 0 or self.spread_share < 0:
            raise ValueError(f"costs must be >= 0, got taker_fee={self.taker_fee}, spread_share={self.spread_share}")

    def of(self, spread: pd.Series) -> pd.Series:
        """The round-trip cost at each bar of `spread` (relative spreads, (ask - bid) / mid)."""
        return 2 * self.taker_fee + self.spread_share * spread

    def describe(self) -> str:
        return f"2 x taker fee {self.taker_fee:.4%} + {self.spread_share:g} x relative spread"


@dataclass(frozen=True)
class LabelConfig:
    """Triple barriers on the mid price: the volatility target is the EWM std of horizon-long returns,
    over the prices from `vol_warmup` before the events' day on."""

    horizon: pd.Timedelta = pd.Timedelta(minutes=1)
    pt_sl: tuple[float, float] = (1.0, 1.0)
    min_ret: float = 0.0
    vol_span: int = 300
    vol_warmup: pd.Timedelta = pd.Timedelta(hours=1)
    # Consecutive prices further apart than this are a gap: one grid step of the book (1 s), as the
    # features' `gap_tolerance`. A path that reaches a gap before any barrier gets no label (`GAP`;
    # AFML's "first bar at or after t0 + horizon" would jump it), and a return whose earlier price is
    # stale by more than this (it would span a gap) is left out of the volatility target.
    gap_tolerance: pd.Timedelta = pd.Timedelta(seconds=1)
    # Net of costs: a horizontal barrier counts only beyond the event's round-trip cost (None: gross).
    costs: RoundTripCost | None = None


LABELS = LabelConfig()


def label_events(
    mid: pd.Series, events: pd.DatetimeIndex, config: LabelConfig = LABELS, spread: pd.Series | None = None
) -> pd.DataFrame:
    """Labels of `events` (times of bars of `mid`) from the path of `mid`: one row per event, with
    `ts`, the LABEL_COLUMNS and `skipped`. With `config.costs`, the relative `spread` at the bars of
    `mid` gives each event's round-trip cost, which its horizontal barriers must exceed (`label_cost`).

    - `skipped`: no volatility target yet (the warm-up) or one not above `min_ret`: never labelled
      (all label columns None/NaN). The target of a bar is the EWM std of the horizon-long returns up
      to it; a return whose earlier price is stale (across a gap) is left out.
    - `label_barrier` GAP: a gap in `mid` lies on the event's path before its first touch (or before
      the end of the data, when no barrier is reached yet): never labelled (the other columns None/NaN).
    - Otherwise the label, or None/NaN everywhere while the path is not complete yet (pending).
    """
    # A bar whose return would span a gap has none: its target stays the last one before it.
    vol = get_return_vol(mid, config.horizon, config.vol_span, tolerance=config.gap_tolerance)
    vol = vol.reindex(mid.index, method="ffill") if len(vol) else vol
    cost = _round_trip_cost(config.costs, spread, mid.index)
    labels = get_triple_barrier_label(
        mid, vol, config.horizon, pt_sl=config.pt_sl, min_ret=config.min_ret, events=events, min_move=cost
    )
    gaps_up_to = _gaps_up_to(mid.index, config.gap_tolerance)
    across_gap = gaps_up_to[mid.index.get_indexer(labels["t1"])] > gaps_up_to[mid.index.get_indexer(labels.index)]
    labels = labels[~across_gap].reindex(events)
    skipped = ~(vol.reindex(events) > config.min_ret).to_numpy()
    # Without a label (yet), an event is blocked for good when its path has reached a gap.
    gap_ahead = gaps_up_to[-1] > gaps_up_to[mid.index.get_indexer(events)] if len(events) else np.zeros(0, bool)
    blocked = labels["label"].isna().to_numpy() & ~skipped & gap_ahead
    return pd.DataFrame({
        "ts": events,
        # Object dtype keeps Python ints and None (a float column would not fit the smallint column).
        "label": pd.Series([None if pd.isna(v) else int(v) for v in labels["label"]], dtype=object),
        "label_ret": labels["ret"].to_numpy(),
        "label_t1": labels["t1"].to_numpy(),
        "label_barrier": np.where(blocked, GAP, labels["barrier"].to_numpy()),
        "label_cost": cost.reindex(events).to_numpy() if cost is not None else np.full(len(events), np.nan),
        "skipped": skipped,
    })


def _round_trip_cost(costs: RoundTripCost | None, spread: pd.Series | None, index: pd.DatetimeIndex) -> pd.Series | None:
    if costs is None:
        return None
    if spread is None:
        raise ValueError("labels net of costs need the relative spread at the bars of the prices")
    return costs.of(spread.reindex(index))


def _gaps_up_to(index: pd.DatetimeIndex, tolerance: pd.Timedelta) -> np.ndarray:
    """Per bar, how many gaps (consecutive bars more than `tolerance` apart) end at or before it."""
    counts = np.zeros(len(index), dtype=np.int64)
    np.cumsum(np.diff(index.as_unit("ns").asi8) > pd.Timedelta(tolerance).value, out=counts[1:])
    return counts
