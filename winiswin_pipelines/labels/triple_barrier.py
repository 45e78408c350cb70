"""Triple-barrier labels (López de Prado, AFML ch. 3), vectorised with numpy.

Semantics (AFML snippets 3.2-3.4 and the mlfinlab/mlfinpy lineage):

- An event at bar t0 has an upper barrier at `pt * vol[t0]` and a lower barrier at `-sl * vol[t0]`,
  in simple returns from the event's close, `(price / price[t0] - 1) * side`. A multiplier of 0
  disables that barrier. Both multipliers apply as given, with or without `side` (unlike the
  reference code, which uses `pt_sl[0]` for both when there is no side: mlfinlab issue #451).
- The vertical barrier is `horizon` bars after t0, or, for a Timedelta, the first bar at or after
  t0 + horizon (snippet 3.4).
- The path runs from the event bar to the vertical barrier inclusive; a barrier is touched when the
  return is strictly above the upper (strictly below the lower) barrier; the first touch wins. A
  horizontal touch on the vertical bar itself counts as the horizontal barrier.
- Labels say which barrier fired: 1 upper, -1 lower, 0 vertical. `ret` is the return at the touch.
- Net of costs: with `min_move` (per event, e.g. its round-trip cost as a fraction), each horizontal
  barrier lies at least that far: a move that would not pay its costs is not a profit or a loss
  worth a label of its own, and the event goes on to a wider barrier or the vertical one.
- Events whose `vol` is not above `min_ret` (or is NaN) are skipped. An event whose vertical barrier
  lies beyond the data and that touched no barrier yet gets no label: it is left out of the result
  until later data arrives.

How it is fast: the first bar of a path beyond a barrier is found for all events at once by binary
lifting over a sparse table of range maxima and minima of the prices (log2(horizon) vectorised steps,
no per-event loop); for a few events on long data the (events, path) matrix of returns is cheaper
than the tables and is used instead. Returns are compared exactly as a per-event loop computes them:
division by a positive price and subtracting 1 are monotone under IEEE rounding, so the extreme price
of a block gives the extreme return of the block bit for bit.

On purpose, unlike the mlfinpy reference, the label says which barrier fired: the reference re-derives
it from log returns, so with pt_sl != (1, 1) an event that touched a barrier can come out 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from winiswin_pipelines.labels.volatility import check_price_series

BARRIERS = ("upper", "lower", "vertical")
_PATH_MATRIX_CELLS = 4_000_000  # returns held at once by the few-events search
_LABEL_OF_BARRIER = np.array([1, -1, 0], dtype=np.int8)


def get_triple_barrier_label(
    price: pd.Series,
    vol: pd.Series,
    horizon: int | pd.Timedelta,
    *,
    pt_sl: Sequence[float] = (1.0, 1.0),
    min_ret: float = 0.0,
    events: pd.DatetimeIndex | Sequence | None = None,
    side: pd.Series | None = None,
    min_move: pd.Series | float | None = None,
) -> pd.DataFrame:
    """Label `events` (default: every bar of `price`) by the first barrier their path touches.

    `price`: closes on a tz-aware UTC DatetimeIndex, strictly increasing, finite and positive.
    `vol`: the volatility target as a fraction, indexed like `price` (missing bars are skipped).
    `horizon`: bars (int >= 1) or a positive Timedelta. `side`: +1/-1 per event (meta-labelling).
    `min_move`: the least width of a horizontal barrier, as a fraction, per event (a Series indexed
    like `price`) or for all; NaN or None: no floor.
    Returns a DataFrame indexed by event time (`t0`) with `label`, `ret`, `t1` and `barrier`.
    """
    index = check_price_series(price)
    values = _checked_prices(price)
    pt, sl = _checked_pt_sl(pt_sl)
    if min_ret < 0:
        raise ValueError(f"min_ret must be >= 0, got {min_ret}")
    start = _event_positions(index, events)
    target = _aligned(vol, index[start], "vol").to_numpy(dtype=float)
    keep = target > min_ret
    start, target = start[keep], target[keep]
    sides = _event_sides(side, index[start])
    floor = _event_floor(min_move, index[start])
    vertical = _vertical_positions(index, start, horizon)
    end = np.minimum(vertical, len(values) - 1)

    first_beyond = _touch_search(values, len(start), int((end - start).max(initial=0)) + 1)
    p0 = values[start]
    upper = first_beyond(start, end, p0, sides, np.fmax(pt * target, floor)) if pt > 0 else end + 1
    lower = first_beyond(start, end, p0, -sides, np.fmax(sl * target, floor)) if sl > 0 else end + 1
    touched = np.minimum(upper, lower)
    has_label = (touched <= end) | (vertical < len(values))
    barrier = np.where(touched > end, 2, np.where(upper < lower, 0, 1))[has_label]
    t0, t1 = start[has_label], np.minimum(touched, vertical)[has_label]
    ret = (values[t1] / values[t0] - 1) * sides[has_label]
    return pd.DataFrame(
        {
            "label": _LABEL_OF_BARRIER[barrier],
            "ret": ret,
            "t1": index[t1],
            "barrier": np.array(BARRIERS, dtype=object)[barrier],
        },
        index=index[t0].rename("t0"),
    )


def _touch_search(values: np.ndarray, events: int, longest_path: int):
    """The cheaper of two exact searches: every path's returns at once for few events, else sparse tables."""
    if events * longest_path <= len(values) * longest_path.bit_length():
        return functools.partial(_first_beyond_on_paths, values, longest_path)
    return _RangeExtremes(values, longest_path).first_beyond


def _first_beyond_on_paths(
    values: np.ndarray, longest_path: int, start: np.ndarray, end: np.ndarray, p0: np.ndarray, sign: np.ndarray,
    bound: np.ndarray,
) -> np.ndarray:
    """Like `_RangeExtremes.first_beyond`, from the (events, path) matrix of returns, in chunks of events."""
    first = np.empty(len(start), dtype=np.int64)
    steps = np.arange(longest_path)
    chunk = max(1, _PATH_MATRIX_CELLS // longest_path)
    for lo in range(0, len(start), chunk):
        rows = slice(lo, lo + chunk)
        s, e = start[rows, None], end[rows, None]
        positions = s + steps
        returns = (values[np.minimum(positions, len(values) - 1)] / p0[rows, None] - 1) * sign[rows, None]
        beyond = (returns > bound[rows, None]) & (positions <= e)
        first[lo : lo + chunk] = np.where(beyond.any(axis=1), s[:, 0] + beyond.argmax(axis=1), e[:, 0] + 1)
    return first


class _RangeExtremes:
    """Sparse tables of range maxima and minima: level k holds the extremes of blocks of 2**k bars."""

    def __init__(self, values: np.ndarray, longest_path: int):
        self.maxima, self.minima = [values], [values]
        width = 1
        while width * 2 <= longest_path:
            self.maxima.append(_combine(self.maxima[-1], width, np.maximum))
            self.minima.append(_combine(self.minima[-1], width, np.minimum))
            width *= 2

    def first_beyond(
        self, start: np.ndarray, end: np.ndarray, p0: np.ndarray, sign: np.ndarray, bound: np.ndarray
    ) -> np.ndarray:
        """Per event, the first position in [start, end] with (price/p0 - 1) * sign > bound; end + 1 if none.

        The lower barrier is the same search with the sign flipped: r * side < -b  <=>  r * -side > b.
        """
        position = start.copy()
        last = len(self.maxima[0]) - 1
        rising = sign > 0
        for level in range(len(self.maxima) - 1, -1, -1):
            width = 1 << level
            at = np.minimum(position, last)
            # The block's largest signed return comes from its max price when sign is +1, else its min.
            extreme = np.where(rising, self.maxima[level][at], self.minima[level][at])
            block_is_quiet = (extreme / p0 - 1) * sign <= bound
            position = np.where((position + width - 1 <= end) & block_is_quiet, position + width, position)
        return position


def _combine(values: np.ndarray, width: int, pick) -> np.ndarray:
    combined = values.copy()
    pick(values[:-width], values[width:], out=combined[:-width])
    return combined


def _checked_prices(price: pd.Series) -> np.ndarray:
    values = price.to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        first = price.index[np.argmax(bad)]
        raise ValueError(f"price must be finite and positive: {int(bad.sum())} bad values, first at {first}")
    return values


def _checked_pt_sl(pt_sl: Sequence[float]) -> tuple[float, float]:
    if len(pt_sl) != 2 or any(not np.isfinite(m) or m < 0 for m in pt_sl):
        raise ValueError(f"pt_sl must be two finite multipliers >= 0, got {tuple(pt_sl)}")
    return float(pt_sl[0]), float(pt_sl[1])


def _event_positions(index: pd.DatetimeIndex, events) -> np.ndarray:
    if events is None:
        return np.arange(len(index))
    times = pd.DatetimeIndex(events).unique().sort_values()
    positions = index.get_indexer(times)
    if (positions < 0).any():
        missing = times[positions < 0]
        raise ValueError(f"{len(missing)} events are not bars of price, first {missing[0]}")
    return positions


def _aligned(series: pd.Series, times: pd.DatetimeIndex, name: str) -> pd.Series:
    if not isinstance(series, pd.Series):
        raise TypeError(f"{name} must be a pandas Series aligned with price, got {type(series).__name__}")
    return series.reindex(times)


def _event_sides(side: pd.Series | None, times: pd.DatetimeIndex) -> np.ndarray:
    if side is None:
        return np.ones(len(times))
    sides = _aligned(side, times, "side").to_numpy(dtype=float)
    bad = ~np.isin(sides, (1.0, -1.0))
    if bad.any():
        raise ValueError(f"side must be +1 or -1 for every event: {int(bad.sum())} are not, first at {times[bad][0]}")
    return sides


def _event_floor(min_move: pd.Series | float | None, times: pd.DatetimeIndex) -> np.ndarray:
    """The least barrier width of each event (NaN: none)."""
    if min_move is None:
        return np.full(len(times), np.nan)
    if isinstance(min_move, pd.Series):
        floor = _aligned(min_move, times, "min_move").to_numpy(dtype=float)
    else:
        floor = np.full(len(times), float(min_move))
    if (floor < 0).any():
        raise ValueError("min_move must be >= 0")
    return floor


def _vertical_positions(index: pd.DatetimeIndex, start: np.ndarray, horizon: int | pd.Timedelta) -> np.ndarray:
    """Position of each event's vertical barrier; len(index) or more when it lies beyond the data."""
    if isinstance(horizon, (pd.Timedelta, np.timedelta64)) or hasattr(horizon, "total_seconds"):
        delta = pd.Timedelta(horizon)
        if delta <= pd.Timedelta(0):
            raise ValueError(f"horizon must be positive, got {delta}")
        return index.searchsorted(index[start] + delta, side="left")
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a number of bars >= 1 or a positive Timedelta, got {horizon!r}")
    return start + int(horizon)
