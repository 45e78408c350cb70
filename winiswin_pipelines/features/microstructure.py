"""Order-book microstructure features per book snapshot, pure numpy.

Per snapshot at exchange time t (all UTC), from the book at t and earlier snapshots only:

- `mid = (bid + ask) / 2`; `spread_pct = (ask - bid) / mid`.
- `obi = (bid_qty - ask_qty) / (bid_qty + ask_qty)` at level 1, in [-1, 1].
- `obi_depth`: the same over the top `depth_levels` levels, level i weighted 1/i.
- `microprice`: the size-weighted mid `(bid * ask_qty + ask * bid_qty) / (bid_qty + ask_qty)`
  (= mid + spread/2 * obi; Stoikov's model-based micro-price needs a fitted model).
- `hour_sin`, `hour_cos`: UTC time of day on the unit circle (one turn per 24 h, to the nanosecond).
- `dow_sin`, `dow_cos`: UTC day of week (Monday = 0) on the unit circle (one turn per 7 days).
- `ofi`: order-flow imbalance of Cont, Kukanov and Stoikov (2014) at level 1, summed over the
  snapshots in (t - ofi_window, t]; each term compares a snapshot with the one before it:
  e = 1{b >= b'} qb - 1{b <= b'} qb' - 1{a <= a'} qa + 1{a >= a'} qa'.
- `ret_short = mid(t) / mid(t') - 1`, t' the last snapshot at or before t - return_horizon.
- `realized_vol = sqrt(sum of squared log mid returns)` between consecutive snapshots in
  (t - vol_window, t] (a fraction over the window, not annualised).

Defined behaviour at the edges:

- Zero volume on both sides (level 1, or all depth levels): `obi` / `obi_depth` are 0 (no imbalance
  to measure) and `microprice` is the mid.
- Missing levels (fewer levels than `depth_levels`, NaN price or size): they add no volume (nor
  does a negative size, which no exchange sends).
- Locked book (ask == bid): valid, `spread_pct` is 0 (`book_state` "locked").
- Crossed book (ask < bid) or a side without a price ("one_sided"): not a usable book. Every
  book-derived feature is NaN and the snapshot takes no part in the flow features (`ofi`,
  `ret_short`, `realized_vol`) of later snapshots; the time features are still computed. Gaps are
  between usable snapshots: unusable books for longer than the tolerance make one.

Windowed features (`ofi`, `ret_short`, `realized_vol`) need their window observed without a hole,
with `gap_tolerance` (tau, default one grid step of the book: 1 s) as the only slack:

- The reference snapshot of a window W at t is the last usable snapshot at or before t - W. The
  feature is NaN when there is none, or when it is stale: older than t - W - tau.
- A gap is two consecutive usable snapshots more than tau apart (ts[k] - ts[k-1] > tau). The
  feature is NaN when a gap lies between its reference snapshot and t; so the first rows after a
  gap (those whose window reaches back to it) are NaN. A stale reference is itself such a gap.
- Hence a feature at t reads only snapshots in [t - W - tau, t]: `FeatureConfig.warmup` of history
  before a day is all its first rows can read. A row has the same NaNs and values whichever range
  of snapshots around it is computed (a day alone, or many days at once), up to the rounding of the
  running sums behind `ofi` and `realized_vol`, which start at the first snapshot given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

NS_PER_DAY = 86_400 * 10**9
# 1970-01-01 was a Thursday: Monday = 0 makes it day 3.
_EPOCH_WEEKDAY = 3
BOOK_STATES = ("ok", "locked", "crossed", "one_sided")
FEATURE_COLUMNS = (
    "mid", "microprice", "obi", "obi_depth", "spread_pct", "hour_sin", "hour_cos", "dow_sin", "dow_cos",
    "ofi", "ret_short", "realized_vol",
)


@dataclass(frozen=True)
class FeatureConfig:
    """Levels in the depth imbalance, the look-back windows of the flow features, and how far apart
    usable snapshots may be before a window counts as not observed (see the module docstring)."""

    depth_levels: int = 10
    ofi_window: pd.Timedelta = pd.Timedelta(seconds=10)
    return_horizon: pd.Timedelta = pd.Timedelta(seconds=10)
    vol_window: pd.Timedelta = pd.Timedelta(seconds=60)
    # One grid step of the book: the market-data import samples it every second (`book_cadence_ms`).
    gap_tolerance: pd.Timedelta = pd.Timedelta(seconds=1)

    def __post_init__(self) -> None:
        windows = {"ofi_window": self.ofi_window, "return_horizon": self.return_horizon, "vol_window": self.vol_window}
        for name, window in windows.items():
            if not pd.Timedelta(window) > pd.Timedelta(0):
                raise ValueError(f"{name} must be a positive Timedelta, got {window!r}")
        if not pd.Timedelta(self.gap_tolerance) >= pd.Timedelta(0):
            raise ValueError(f"gap_tolerance must be a Timedelta >= 0, got {self.gap_tolerance!r}")

    @property
    def warmup(self) -> pd.Timedelta:
        """How much history before a snapshot its features can read: the longest window plus the tolerance."""
        return max(self.ofi_window, self.return_horizon, self.vol_window) + self.gap_tolerance


@dataclass(frozen=True)
class BookArrays:
    """Snapshots of one symbol in time order; level arrays are (n, levels), level 1 in column 0, NaN if absent."""

    ts: np.ndarray  # int64 nanoseconds since the epoch, UTC, strictly increasing
    bid_px: np.ndarray
    bid_qty: np.ndarray
    ask_px: np.ndarray
    ask_qty: np.ndarray

    def __post_init__(self) -> None:
        shapes = {a.shape for a in (self.bid_px, self.bid_qty, self.ask_px, self.ask_qty)}
        if len(shapes) != 1 or len(self.ts.shape) != 1 or next(iter(shapes))[:1] != self.ts.shape:
            raise ValueError(
                f"book arrays must be (n, levels) with n = len(ts); got {sorted(shapes)} and {self.ts.shape}"
            )
        if len(self.ts) > 1 and not (np.diff(self.ts) > 0).all():
            position = int(np.argmax(np.diff(self.ts) <= 0)) + 1
            raise ValueError(f"snapshot times must be strictly increasing; row {position} is not")

    def head(self, stop: int) -> BookArrays:
        """The first `stop` snapshots."""
        arrays = (self.ts, self.bid_px, self.bid_qty, self.ask_px, self.ask_qty)
        return BookArrays(*(array[:stop] for array in arrays))


def compute_features(book: BookArrays, config: FeatureConfig = FeatureConfig()) -> pd.DataFrame:
    """The features of every snapshot of `book`, plus `ts` (UTC) and `book_state`, in input order."""
    bid, ask = book.bid_px[:, 0], book.ask_px[:, 0]
    bid_qty, ask_qty = _volume(book.bid_qty[:, 0], bid), _volume(book.ask_qty[:, 0], ask)
    state = _book_state(bid, ask)
    usable = state <= 1
    mid = _mid(bid, ask, usable)
    level_qty = bid_qty + ask_qty
    safe_qty = np.where(level_qty > 0, level_qty, 1.0)
    obi = np.where(level_qty > 0, (bid_qty - ask_qty) / safe_qty, 0.0)
    microprice = np.where(level_qty > 0, (bid * ask_qty + ask * bid_qty) / safe_qty, mid)
    columns = {
        "ts": pd.DatetimeIndex(book.ts.view("M8[ns]")).tz_localize("UTC"),
        "mid": mid,
        "microprice": np.where(usable, microprice, np.nan),
        "obi": np.where(usable, obi, np.nan),
        "obi_depth": np.where(usable, _depth_imbalance(book, config.depth_levels), np.nan),
        "spread_pct": (ask - bid) / mid,
        **_time_features(book.ts),
        **_flow_features(book, usable, mid, bid_qty, ask_qty, config),
        "book_state": pd.Categorical.from_codes(state, BOOK_STATES),
    }
    return pd.DataFrame(columns)


def usable_mid(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """The level-1 mid of each book, NaN where the book is not usable (crossed or one-sided): the
    `mid` feature, and the price path of the labels."""
    return _mid(bid, ask, _book_state(bid, ask) <= 1)


def _mid(bid: np.ndarray, ask: np.ndarray, usable: np.ndarray) -> np.ndarray:
    return np.where(usable, (bid + ask) / 2, np.nan)


def snapshot_gaps(ts: np.ndarray, tolerance: pd.Timedelta) -> np.ndarray:
    """Positions k >= 1 of the snapshots that end a gap: ts[k] - ts[k - 1] > tolerance (ts in ns)."""
    return np.flatnonzero(np.diff(ts) > pd.Timedelta(tolerance).value) + 1


def _volume(qty: np.ndarray, price: np.ndarray) -> np.ndarray:
    """Sizes with absent levels (no price or no size, both NaN) as 0: price * 0 + qty is NaN there, fmax drops it."""
    volume = np.multiply(price, 0.0)
    volume += qty
    return np.fmax(volume, 0.0, out=volume)


def _book_state(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """0 ok (ask > bid), 1 locked, 2 crossed, 3 one-sided (a side without a positive price)."""
    state = (ask <= bid).view(np.int8) + (ask < bid).view(np.int8)
    state[~((bid > 0) & (ask > 0))] = 3
    return state


def _depth_imbalance(book: BookArrays, levels: int) -> np.ndarray:
    n_levels = min(levels, book.bid_px.shape[1])
    weights = 1.0 / np.arange(1, n_levels + 1)
    bid = np.einsum("ij,j->i", _volume(book.bid_qty[:, :n_levels], book.bid_px[:, :n_levels]), weights)
    ask = np.einsum("ij,j->i", _volume(book.ask_qty[:, :n_levels], book.ask_px[:, :n_levels]), weights)
    total = bid + ask
    return np.where(total > 0, (bid - ask) / np.where(total > 0, total, 1.0), 0.0)


_WEEK_ANGLES = np.arange(7) * (2 * np.pi / 7)
_DOW_SIN, _DOW_COS = np.sin(_WEEK_ANGLES), np.cos(_WEEK_ANGLES)


def _time_features(ts: np.ndarray) -> dict[str, np.ndarray]:
    day_angle = (ts % NS_PER_DAY) * (2 * np.pi / NS_PER_DAY)
    weekday = (ts // NS_PER_DAY + _EPOCH_WEEKDAY) % 7
    return {
        "hour_sin": np.sin(day_angle), "hour_cos": np.cos(day_angle),
        "dow_sin": _DOW_SIN[weekday], "dow_cos": _DOW_COS[weekday],
    }


def _flow_features(
    book: BookArrays, usable: np.ndarray, mid: np.ndarray, bid_qty: np.ndarray, ask_qty: np.ndarray,
    config: FeatureConfig,
) -> dict[str, np.ndarray]:
    """OFI, short return and realised volatility over the usable snapshots, scattered back to all rows."""
    rows = slice(None) if usable.all() else np.flatnonzero(usable)
    ts, m = book.ts[rows], mid[rows]
    bid, ask = book.bid_px[rows, 0], book.ask_px[rows, 0]
    qb, qa = bid_qty[rows], ask_qty[rows]
    flow = np.zeros(len(ts))
    flow[1:] = (
        (bid[1:] >= bid[:-1]) * qb[1:] - (bid[1:] <= bid[:-1]) * qb[:-1]
        - (ask[1:] <= ask[:-1]) * qa[1:] + (ask[1:] >= ask[:-1]) * qa[:-1]
    )
    squared = np.zeros(len(ts))
    squared[1:] = np.log(m[1:] / m[:-1]) ** 2
    windows = _Windows(ts, config.gap_tolerance)
    ofi = _window_sum(flow, *windows(config.ofi_window))
    realized_vol = np.sqrt(_window_sum(squared, *windows(config.vol_window)))
    reference, observed = windows(config.return_horizon)
    ret_short = np.where(observed, m / m[reference] - 1, np.nan)
    values = {"ofi": ofi, "ret_short": ret_short, "realized_vol": realized_vol}
    if isinstance(rows, slice):
        return values
    return {name: _scatter(len(usable), rows, column) for name, column in values.items()}


class _Windows:
    """Per snapshot and window length (computed once per length): the reference snapshot, the last
    one at or before t - window (0 when there is none), and whether the window is observed: the
    reference exists and no gap (consecutive snapshots more than `tolerance` apart) lies between it
    and t. A stale reference (older than t - window - tolerance) is such a gap."""

    def __init__(self, ts: np.ndarray, tolerance: pd.Timedelta):
        self.ts, self.cache = ts, {}
        # gaps_up_to[i]: how many gaps end at or before snapshot i.
        self.gaps_up_to = np.zeros(len(ts), dtype=np.int64)
        np.cumsum(np.diff(ts) > pd.Timedelta(tolerance).value, out=self.gaps_up_to[1:])

    def __call__(self, window: pd.Timedelta) -> tuple[np.ndarray, np.ndarray]:
        if window not in self.cache:
            first = np.searchsorted(self.ts, self.ts - window.value, side="right")  # first inside (t - window, t]
            reference = np.maximum(first - 1, 0)
            observed = (first >= 1) & (self.gaps_up_to[reference] == self.gaps_up_to)
            self.cache[window] = reference, observed
        return self.cache[window]


def _window_sum(values: np.ndarray, reference: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Sum of values[reference + 1 : i + 1] per row i (each value compares a snapshot with the one
    before it, so the window's first term is against the reference); NaN where not observed."""
    totals = np.cumsum(values)
    return np.where(observed, totals - totals[reference], np.nan)


def _scatter(n: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(n, np.nan)
    out[rows] = values
    return out


def book_arrays_from_frame(snapshots: pd.DataFrame, levels: int = 10) -> BookArrays:
    """BookArrays from rows shaped like the `book_snapshots` table (one symbol, sorted by exchange_time).

    Level 1 comes from `best_bid`/`best_ask` (and their sizes); deeper levels from the
    `bid_prices`/`bid_sizes`/`ask_prices`/`ask_sizes` arrays, padded with NaN where shorter.
    """
    times = pd.DatetimeIndex(snapshots["exchange_time"])
    if times.tz is None:
        raise ValueError("book snapshots: exchange_time must be timezone-aware UTC")
    arrays = {}
    for side in ("bid", "ask"):
        prices = _level_matrix(snapshots[f"{side}_prices"].tolist(), levels)
        sizes = _level_matrix(snapshots[f"{side}_sizes"].tolist(), levels)
        prices[:, 0] = snapshots[f"best_{side}"].to_numpy(dtype=float)
        sizes[:, 0] = snapshots[f"best_{side}_qty"].to_numpy(dtype=float)
        arrays[f"{side}_px"], arrays[f"{side}_qty"] = prices, sizes
    return BookArrays(ts=times.tz_convert("UTC").as_unit("ns").asi8, **arrays)


def _level_matrix(rows: Sequence[Sequence[float] | None], levels: int) -> np.ndarray:
    """Per-row level arrays (None or short where levels are missing) as an (n, levels) matrix, NaN-padded."""
    if rows and all(values is not None and len(values) >= levels for values in rows):
        return np.array([values[:levels] for values in rows], dtype=float)  # the usual full-depth case, in C
    matrix = np.full((len(rows), levels), np.nan)
    for row, values in enumerate(rows):
        if values is not None and len(values):
            head = np.asarray(values[:levels], dtype=float)
            matrix[row, : len(head)] = head
    return matrix
