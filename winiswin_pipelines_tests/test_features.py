"""Microstructure features: hand-worked formulas, edge cases, and no look-ahead."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from winiswin_pipelines.features import BookArrays, FeatureConfig, book_arrays_from_frame, compute_features
from winiswin_pipelines.marketdata.capture import read_capture
from winiswin_pipelines.marketdata.orderbook import rebuild_book_snapshots
from winiswin_pipelines.marketdata.samples import CAPTURE_BTCUSDT_20230404, CAPTURE_BTCUSDT_20230405

T0 = pd.Timestamp("2023-04-05 06:00", tz="UTC")  # a Wednesday


def book(rows: list[tuple], *, start: pd.Timestamp = T0, step_s: float = 1.0, levels: int = 1) -> BookArrays:
    """Snapshots from (bid, bid_qty, ask, ask_qty) or ([bids], [bid_qtys], [asks], [ask_qtys]) rows."""
    def matrix(position: int) -> np.ndarray:
        out = np.full((len(rows), levels), np.nan)
        for i, row in enumerate(rows):
            values = np.atleast_1d(np.asarray(row[position], dtype=float))
            out[i, : len(values)] = values
        return out

    ts = start.value + (np.arange(len(rows)) * step_s * 1e9).astype(np.int64)
    return BookArrays(ts, matrix(0), matrix(1), matrix(2), matrix(3))


def test_level_one_formulas():
    features = compute_features(book([(100.0, 3.0, 101.0, 1.0)])).iloc[0]
    assert features["mid"] == 100.5
    assert features["spread_pct"] == pytest.approx(1 / 100.5)
    assert features["obi"] == 0.5
    assert features["microprice"] == pytest.approx((100 * 1 + 101 * 3) / 4)  # 100.75 = mid + spread/2 * obi
    assert features["book_state"] == "ok"


def test_depth_imbalance_weights_levels_by_one_over_i_and_missing_levels_add_nothing():
    rows = [([100.0, 99.0, 98.0], [1.0, 2.0, 9.0], [101.0, np.nan, 103.0], [3.0, 5.0, 3.0])]
    features = compute_features(book(rows, levels=3), FeatureConfig(depth_levels=2)).iloc[0]
    # bid 1 + 2/2 = 2; ask 3 + (level 2 has no price) = 3; level 3 is beyond depth_levels.
    assert features["obi_depth"] == pytest.approx((2 - 3) / 5)
    assert features["obi"] == pytest.approx((1 - 3) / 4)


def test_time_of_day_and_day_of_week_are_cyclic_utc():
    features = compute_features(book([(1.0, 1.0, 2.0, 1.0)] * 2, start=T0, step_s=18 * 3600)).iloc
    six_am, midnight_thursday = features[0], features[1]
    assert (six_am["hour_sin"], six_am["hour_cos"]) == pytest.approx((1.0, 0.0), abs=1e-12)
    assert (midnight_thursday["hour_sin"], midnight_thursday["hour_cos"]) == pytest.approx((0.0, 1.0), abs=1e-12)
    wednesday, thursday = 2 * 2 * math.pi / 7, 3 * 2 * math.pi / 7
    assert (six_am["dow_sin"], six_am["dow_cos"]) == pytest.approx((math.sin(wednesday), math.cos(wednesday)))
    assert (midnight_thursday["dow_sin"], midnight_thursday["dow_cos"]) == pytest.approx(
        (math.sin(thursday), math.cos(thursday))
    )


def test_zero_volume_on_both_sides():
    rows = [([100.0, 99.0], [0.0, 0.0], [102.0, 103.0], [0.0, 0.0])]
    features = compute_features(book(rows, levels=2)).iloc[0]
    assert (features["obi"], features["obi_depth"], features["microprice"]) == (0.0, 0.0, 101.0)


def test_locked_crossed_and_one_sided_books():
    rows = [
        (100.0, 1.0, 100.5, 1.0),  # ok
        (100.5, 2.0, 100.5, 1.0),  # locked
        (101.0, 1.0, 100.5, 1.0),  # crossed
        (100.0, 1.0, np.nan, np.nan),  # no ask
        (100.0, 1.0, 101.0, 1.0),  # ok
    ]
    features = compute_features(book(rows), FeatureConfig(return_horizon=pd.Timedelta(seconds=1)))
    assert list(features["book_state"]) == ["ok", "locked", "crossed", "one_sided", "ok"]
    locked = features.iloc[1]
    assert (locked["spread_pct"], locked["mid"], locked["obi"]) == (0.0, 100.5, pytest.approx(1 / 3))
    unusable = features.iloc[2:4]
    for column in ("mid", "microprice", "obi", "obi_depth", "spread_pct", "ofi", "ret_short", "realized_vol"):
        assert unusable[column].isna().all(), column
    assert unusable["hour_sin"].notna().all()
    # The last snapshot's 1-second return skips the unusable ones: it is taken against the locked book.
    assert features.iloc[4]["ret_short"] == pytest.approx(100.5 / 100.5 - 1)


def test_order_flow_imbalance_returns_and_volatility_by_hand():
    rows = [
        (100.0, 5.0, 101.0, 4.0),
        (100.0, 7.0, 101.0, 4.0),  # e = 7 - 5 (bid queue grew), ask unchanged: 2
        (100.5, 1.0, 101.0, 2.0),  # bid up: +1; ask queue shrank: -2 + 4 = 2 -> 3
        (100.0, 3.0, 101.5, 6.0),  # bid down: -1 (old queue gone); ask up: +2 (old queue gone) -> 1
    ]
    config = FeatureConfig(
        ofi_window=pd.Timedelta(seconds=2), return_horizon=pd.Timedelta(seconds=2), vol_window=pd.Timedelta(seconds=2)
    )
    features = compute_features(book(rows), config)
    assert features["ofi"].isna().tolist() == [True, True, False, False]
    assert features["ofi"].iloc[2:].tolist() == [5.0, 4.0]
    mids = np.array([100.5, 100.5, 100.75, 100.75])
    assert features["ret_short"].iloc[2:].tolist() == pytest.approx([mids[2] / mids[0] - 1, mids[3] / mids[1] - 1])
    assert features["realized_vol"].iloc[2] == pytest.approx(abs(math.log(100.75 / 100.5)))
    assert features["realized_vol"].iloc[3] == pytest.approx(abs(math.log(100.75 / 100.5)))


def test_windows_need_data_from_before_the_window():
    rows = [(100.0, 1.0, 101.0, 1.0)] * 5
    features = compute_features(book(rows), FeatureConfig(ofi_window=pd.Timedelta(seconds=3)))
    # Only snapshots at t >= 3 s have a snapshot at or before t - 3 s.
    assert features["ofi"].isna().tolist() == [True, True, True, False, False]


def random_book(n: int, seed: int = 7, levels: int = 5) -> BookArrays:
    rng = np.random.default_rng(seed)
    mid = 28_000 + np.cumsum(rng.normal(0, 0.5, n)).round(1)
    spread = rng.choice([0.1, 0.1, 0.2, 0.0, -0.1], n)  # some locked and crossed books
    steps = np.arange(levels) * 0.1
    bids = (mid - spread / 2)[:, None] - steps
    asks = (mid + spread / 2)[:, None] + steps
    bid_qty, ask_qty = rng.exponential(2, (n, levels)), rng.exponential(2, (n, levels))
    bid_qty[rng.random((n, levels)) < 0.05] = np.nan  # missing levels
    ts = T0.value + np.cumsum(rng.integers(100, 2_000, n)) * 1_000_000
    return BookArrays(ts, bids, bid_qty, asks, ask_qty)


def test_features_use_only_data_at_or_before_their_timestamp():
    arrays = random_book(3_000)
    full = compute_features(arrays)
    for stop in (1, 250, 1_234, 2_999):
        prefix = compute_features(arrays.head(stop))
        pd.testing.assert_frame_equal(prefix, full.iloc[:stop])


def test_ranges_on_random_books():
    features = compute_features(random_book(5_000))
    usable = features[features["book_state"].isin(["ok", "locked"])]
    assert usable[["obi", "obi_depth"]].abs().max().max() <= 1
    assert (usable["spread_pct"] >= 0).all()
    assert usable[["mid", "microprice", "obi", "obi_depth", "spread_pct"]].notna().all().all()
    assert (usable["microprice"] >= usable["mid"] - usable["spread_pct"] * usable["mid"] / 2 - 1e-9).all()


def test_unordered_or_misshaped_books_are_rejected():
    with pytest.raises(ValueError, match="strictly increasing; row 1"):
        BookArrays(np.array([2, 1]), *(np.ones((2, 1)) for _ in range(4)))
    with pytest.raises(ValueError, match="n = len"):
        BookArrays(np.array([1, 2]), np.ones((3, 1)), np.ones((3, 1)), np.ones((3, 1)), np.ones((3, 1)))


def test_book_arrays_from_table_rows_pad_short_levels():
    frame = pd.DataFrame({
        "exchange_time": pd.to_datetime(["2023-04-05 00:00:00", "2023-04-05 00:00:01"], utc=True),
        "best_bid": [100.0, 100.1], "best_bid_qty": [1.0, 2.0], "best_ask": [100.2, 100.3], "best_ask_qty": [3.0, 4.0],
        "bid_prices": [[100.0, 99.9, 99.8], None], "bid_sizes": [[1.0, 5.0, 6.0], None],
        "ask_prices": [[100.2], [100.3, 100.4]], "ask_sizes": [[3.0], [4.0, 7.0]],
    })
    arrays = book_arrays_from_frame(frame, levels=2)
    midnight = pd.Timestamp("2023-04-05", tz="UTC").value
    assert arrays.ts.tolist() == [midnight, midnight + 10**9]
    np.testing.assert_array_equal(arrays.bid_px, [[100.0, 99.9], [100.1, np.nan]])
    np.testing.assert_array_equal(arrays.ask_qty, [[3.0, np.nan], [4.0, 7.0]])
    naive = frame.assign(exchange_time=frame["exchange_time"].dt.tz_localize(None))
    with pytest.raises(ValueError, match="timezone-aware"):
        book_arrays_from_frame(naive)


def test_features_on_the_real_capture():
    messages = (m for path in (CAPTURE_BTCUSDT_20230404, CAPTURE_BTCUSDT_20230405) for m in read_capture(path))
    snapshots = rebuild_book_snapshots(messages, symbol="BTCUSDT", cadence=dt.timedelta(seconds=1), depth=10)
    features = compute_features(book_arrays_from_frame(snapshots, levels=10))
    assert len(features) > 400 and (features["book_state"] == "ok").all()
    assert features["spread_pct"].between(0, 1e-3).all() and features["obi"].between(-1, 1).all()
    # BTCUSDT around 28,150 then: mids, and a 60-second realised volatility of a few basis points.
    assert features["mid"].between(27_000, 29_000).all()
    assert 0 < features["realized_vol"].median() < 0.005
    assert features["ofi"].notna().sum() == len(features) - 10
