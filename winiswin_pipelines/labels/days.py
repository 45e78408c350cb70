"""The pipeline's labels of a UTC day, pure: its triple-barrier settings, and the labels of a day's
events from their mid-price path (with the volatility target and the gap rule applied)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from winiswin_pipelines.labels.triple_barrier import get_triple_barrier_label
from winiswin_pipelines.labels.volatility import get_return_vol

# The label columns of `training_features` (and of the training dataset).
LABEL_COLUMNS = ("label", "label_ret", "label_t1", "label_barrier")


@dataclass(frozen=True)
class LabelConfig:
    """Triple barriers on the mid price: the volatility target is the EWM std of horizon-long returns."""

    horizon: pd.Timedelta = pd.Timedelta(minutes=1)
    pt_sl: tuple[float, float] = (1.0, 1.0)
    min_ret: float = 0.0
    vol_span: int = 300
    vol_warmup: pd.Timedelta = pd.Timedelta(hours=1)
    # A path may end at most this long after t0 + horizon: beyond, the data has a gap and the event
    # gets no label (AFML's "first bar at or after t0 + horizon" would otherwise jump the gap).
    max_gap: pd.Timedelta = pd.Timedelta(minutes=1)


LABELS = LabelConfig()


def label_events(mid: pd.Series, events: pd.DatetimeIndex, config: LabelConfig = LABELS) -> pd.DataFrame:
    """Labels of `events` (times of bars of `mid`) from the path of `mid`: one row per event, with
    `ts`, the LABEL_COLUMNS (None/NaN where the path is not complete yet or the event is skipped) and
    `skipped` (no volatility target yet, the warm-up, or one not above `min_ret`: never labelled)."""
    vol = get_return_vol(mid, config.horizon, config.vol_span)
    labels = get_triple_barrier_label(
        mid, vol, config.horizon, pt_sl=config.pt_sl, min_ret=config.min_ret, events=events
    )
    across_gap = labels["t1"] > labels.index + config.horizon + config.max_gap
    labels = labels[~across_gap].reindex(events)
    return pd.DataFrame({
        "ts": events,
        # Object dtype keeps Python ints and None (a float column would not fit the smallint column).
        "label": pd.Series([None if pd.isna(v) else int(v) for v in labels["label"]], dtype=object),
        "label_ret": labels["ret"].to_numpy(),
        "label_t1": labels["t1"].to_numpy(),
        "label_barrier": labels["barrier"].to_numpy(),
        "skipped": ~(vol.reindex(events) > config.min_ret).to_numpy(),
    })
