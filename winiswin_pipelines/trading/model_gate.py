"""The model gate: the signal model's say on the strategy's entries, from the book the session sees.

The model (`ml.model.SignalModel`, from the registry) was trained on the microstructure features of
the stored book snapshots, one per second. A session sees books as events: the gate keeps, per
symbol, the first book of each second (the rule the stored snapshots follow) over the features'
look-back (`FeatureConfig.warmup`), and computes the features of the newest one with the same code
that made the training rows (`features.microstructure.compute_features`). Only books already seen
are read: no look-ahead.

On an entry signal the model's probability of the trade's direction (label 1, the upper barrier
first, for a LONG; -1 for a SHORT) is the trade's `confidence` and `win_probability`; the entry goes
ahead only when it reaches `min_win_probability`. Without a fresh book (none within `stale_after`)
the model cannot judge and the entry is skipped.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from winiswin_pipelines.features.microstructure import NS_PER_DAY, BookArrays, FeatureConfig
from winiswin_pipelines.marketdata.feed import BookEvent
from winiswin_pipelines.ml.model import SignalModel

MODEL_NAME = "signal_model"  # the registered model `defs/models.py` trains
SIDE_LABEL = {"LONG": 1, "SHORT": -1}  # the triple-barrier label a trade of that side wins with
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NS = 1_000_000_000


@dataclass(frozen=True)
class ModelChoice:
    """The model a session gates its entries with, loaded once by the caller (the Dagster layer)."""

    reference: str  # what was asked for: an alias ("champion") or a version ("3")
    version: int  # the registered version it resolved to
    model: SignalModel = field(repr=False, compare=False)
    min_win_probability: float = 0.5
    training_start: dt.datetime | None = None  # the time the model's training data covers
    training_end: dt.datetime | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for the session's row."""
        return {"name": MODEL_NAME, "reference": self.reference, "version": self.version,
                "min_win_probability": self.min_win_probability, "features": list(self.model.features),
                "training_start": _iso(self.training_start), "training_end": _iso(self.training_end)}

    def overlapping_days(self, days: list[dt.date]) -> list[dt.date]:
        """The days among `days` (UTC) the model's training data touches; unknown window: all of them."""
        if self.training_start is None or self.training_end is None:
            return list(days)
        return [day for day in days if _day_start(day) <= self.training_end
                and self.training_start < _day_start(day) + dt.timedelta(days=1)]


@dataclass(frozen=True)
class Judgement:
    probability: float | None  # None: the model could not judge (no fresh book)
    passed: bool
    reason: str
    features: dict[str, float]


class BookWindow:
    """One symbol's recent books, the first of each `cadence`, as far back as the features read.

    `latest_features` computes the newest book's row only, with `compute_features`' definitions (the
    flow features from level 1 over the window, the imbalances from the newest book's levels): a
    session needs that row within a millisecond, and building the whole frame takes more.
    """

    def __init__(self, config: FeatureConfig | None = None, cadence: dt.timedelta = dt.timedelta(seconds=1),
                 levels: int = 10):
        self.config, self.levels = config or FeatureConfig(), levels
        self._cadence_ns = int(cadence.total_seconds() * _NS)
        self._keep_ns = pd.Timedelta(self.config.warmup).value + self._cadence_ns
        self._level1: deque[tuple[int, float, float, float, float]] = deque()  # ts, bid, bid qty, ask, ask qty
        self._depth: BookArrays | None = None  # the newest kept book, every level

    def add(self, event: BookEvent) -> None:
        ts = _ns(event.exchange_time)
        if self._level1 and ts // self._cadence_ns <= self._level1[-1][0] // self._cadence_ns:
            return  # not the first book of its second (or out of order)
        bid_px, bid_qty, ask_px, ask_qty = self._levels(event)
        self._level1.append((ts, bid_px[0], bid_qty[0], ask_px[0], ask_qty[0]))
        self._depth = BookArrays(np.array([ts]), bid_px[None], bid_qty[None], ask_px[None], ask_qty[None])
        while self._level1[0][0] < ts - self._keep_ns:
            self._level1.popleft()

    def last_time(self) -> dt.datetime | None:
        return _EPOCH + dt.timedelta(microseconds=self._level1[-1][0] // 1000) if self._level1 else None

    def latest_features(self) -> dict[str, float]:
        """The features of the newest book kept (NaN where its windows are not observed)."""
        ts, bid, bid_qty, ask, ask_qty = np.array(self._level1).T
        ts = ts.astype(np.int64)
        qb, qa = _volume(bid_qty, bid), _volume(ask_qty, ask)
        usable = (bid > 0) & (ask > 0) & (ask >= bid)
        mid = np.where(usable, (bid + ask) / 2, np.nan)
        row = {"mid": mid[-1], "spread_pct": (ask[-1] - bid[-1]) / mid[-1], **_time_row(int(ts[-1]))}
        total = qb[-1] + qa[-1]
        row["obi"] = ((qb[-1] - qa[-1]) / total if total > 0 else 0.0) if usable[-1] else np.nan
        row["obi_depth"] = _depth_imbalance(self._depth, self.levels) if usable[-1] else np.nan
        row.update(_flow_row(ts[usable], mid[usable], bid[usable], ask[usable], qb[usable], qa[usable],
                             self.config) if usable[-1] else dict.fromkeys(("ofi", "ret_short", "realized_vol"), np.nan))
        return row

    def _levels(self, event: BookEvent) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Level arrays as `book_arrays_from_frame` makes them: level 1 from the best bid/ask."""
        sides = []
        for best, best_qty, prices, sizes in ((event.best_bid, event.best_bid_qty, event.bid_prices, event.bid_sizes),
                                              (event.best_ask, event.best_ask_qty, event.ask_prices, event.ask_sizes)):
            px, qty = np.full(self.levels, np.nan), np.full(self.levels, np.nan)
            depth = min(self.levels, len(prices), len(sizes))
            px[:depth], qty[:depth] = prices[:depth], sizes[:depth]
            px[0], qty[0] = _number(best), _number(best_qty)
            sides += [px, qty]
        return sides[0], sides[1], sides[2], sides[3]


def _volume(qty: np.ndarray, price: np.ndarray) -> np.ndarray:
    """Sizes with absent levels (no price or no size) as 0, negative ones as 0 (as the features count them)."""
    return np.fmax(np.where(np.isnan(price), np.nan, qty), 0.0)


def _time_row(ts: int) -> dict[str, float]:
    day_angle = (ts % NS_PER_DAY) * (2 * np.pi / NS_PER_DAY)
    week_angle = ((ts // NS_PER_DAY + 3) % 7) * (2 * np.pi / 7)  # 1970-01-01 was a Thursday (Monday = 0)
    return {"hour_sin": np.sin(day_angle), "hour_cos": np.cos(day_angle),
            "dow_sin": np.sin(week_angle), "dow_cos": np.cos(week_angle)}


def _depth_imbalance(book: BookArrays, levels: int) -> float:
    n_levels = min(levels, book.bid_px.shape[1])
    weights = 1.0 / np.arange(1, n_levels + 1)
    bid = float(_volume(book.bid_qty[0, :n_levels], book.bid_px[0, :n_levels]) @ weights)
    ask = float(_volume(book.ask_qty[0, :n_levels], book.ask_px[0, :n_levels]) @ weights)
    return (bid - ask) / (bid + ask) if bid + ask > 0 else 0.0


def _flow_row(ts: np.ndarray, mid: np.ndarray, bid: np.ndarray, ask: np.ndarray, qb: np.ndarray, qa: np.ndarray,
              config: FeatureConfig) -> dict[str, float]:
    """OFI, short return and realised volatility of the last usable book (all arrays over usable books)."""
    flow = ((bid[1:] >= bid[:-1]) * qb[1:] - (bid[1:] <= bid[:-1]) * qb[:-1]
            - (ask[1:] <= ask[:-1]) * qa[1:] + (ask[1:] >= ask[:-1]) * qa[:-1])
    squared = np.log(mid[1:] / mid[:-1]) ** 2
    gaps = np.diff(ts) > pd.Timedelta(config.gap_tolerance).value

    def reference(window: pd.Timedelta) -> int | None:
        """The last book at or before t - window, when no gap lies between it and t."""
        first = int(np.searchsorted(ts, ts[-1] - pd.Timedelta(window).value, side="right"))
        return first - 1 if first >= 1 and not gaps[first - 1:].any() else None

    ofi, vol, ret = reference(config.ofi_window), reference(config.vol_window), reference(config.return_horizon)
    return {"ofi": float(flow[ofi:].sum()) if ofi is not None else np.nan,
            "realized_vol": float(np.sqrt(squared[vol:].sum())) if vol is not None else np.nan,
            "ret_short": float(mid[-1] / mid[ret] - 1) if ret is not None else np.nan}


class ModelGate:
    """The model's probability of each entry signal's direction, and the threshold it must reach."""

    def __init__(self, choice: ModelChoice, stale_after: dt.timedelta = dt.timedelta(seconds=5)):
        self.choice, self.stale_after = choice, stale_after
        self._books: dict[str, BookWindow] = {}

    def on_book(self, event: BookEvent) -> None:
        self._books.setdefault(event.symbol, BookWindow()).add(event)

    def judge(self, symbol: str, side: str, now: dt.datetime) -> Judgement:
        window = self._books.get(symbol)
        seen = window.last_time() if window is not None else None
        if seen is None or now - seen > self.stale_after:
            return Judgement(None, False, f"model: no book of {symbol} within {self.stale_after.total_seconds():g} s "
                             "to compute its features", {})
        row = window.latest_features()
        model = self.choice.model
        values = np.array([row[name] for name in model.features], dtype=np.float64)
        probability = float(model.predict_proba(values)[0, model.classes.index(SIDE_LABEL[side])])
        features = {f"model_{name}": float(value) for name, value in zip(model.features, values, strict=True)
                    if np.isfinite(value)}
        features["win_probability"] = probability
        threshold = self.choice.min_win_probability
        passed = probability >= threshold
        verdict = ">=" if passed else "<"
        return Judgement(probability, passed, f"model v{self.choice.version}: P({side} wins) {probability:.3f} "
                         f"{verdict} {threshold:g}", features)


def _ns(time: dt.datetime) -> int:
    delta = time - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000


def _number(value: float | None) -> float:
    return float(value) if value is not None else np.nan


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def _iso(time: dt.datetime | None) -> str | None:
    return time.isoformat() if time is not None else None
