"""Microstructure features: hand-worked formulas, edge cases, and no look-ahead."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from winiswin_pipelines.features import BookArrays, FeatureConfig, book_arrays_from_frame, compute_features
from winiswin_pipelines.features.days import SnapshotGap, day_gaps
from winiswin_pipelines.features.microstructure import snapshot_gaps, usable_mid
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
    # The unusable books leave 3 s without a usable one: a gap, so the last snapshot's 1-second return is NaN.
    assert math.isnan(features.iloc[4]["ret_short"])
    # With a tolerance of 3 s there is no gap: the return skips the unusable books, taken against the locked one.
    tolerant = FeatureConfig(return_horizon=pd.Timedelta(seconds=1), gap_tolerance=pd.Timedelta(seconds=3))
    assert compute_features(book(rows), tolerant).iloc[4]["ret_short"] == pytest.approx(100.5 / 100.5 - 1)


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


def regular_book(seconds: list[int]) -> BookArrays:
    """One-level books at the given seconds after T0: mid 100 + s / 2, bid size 1 + s (a function of the time)."""
    rows = [(99.5 + s / 2, 1.0 + s, 100.5 + s / 2, 2.0) for s in seconds]
    ts = T0.value + np.asarray(seconds, dtype=np.int64) * 10**9
    built = book(rows)
    return BookArrays(ts, built.bid_px, built.bid_qty, built.ask_px, built.ask_qty)


WINDOWS_2S = FeatureConfig(
    ofi_window=pd.Timedelta(seconds=2), return_horizon=pd.Timedelta(seconds=2), vol_window=pd.Timedelta(seconds=2)
)


def test_a_stale_reference_snapshot_makes_the_windowed_features_nan():
    # 1 s grid, one snapshot missing at 3 s: 0 1 2 4 5 6 7.
    features = compute_features(regular_book([0, 1, 2, 4, 5, 6, 7]), WINDOWS_2S)
    flow = features[["ofi", "ret_short", "realized_vol"]]
    # Row 4 s: its reference (the last snapshot at or before 2 s) is 2 s, fresh, but the gap 2 -> 4 s
    # (2 s apart > 1 s) lies in its window; row 5 s: the reference 2 s is 1 s stale, within the
    # tolerance, but the gap lies after it; row 6 s: the reference is 4 s, after the gap: observed again.
    assert flow.isna().all(axis=1).tolist() == [True, True, False, True, True, False, False]
    assert flow.notna().all(axis=1).tolist() == [False, False, True, False, False, True, True]
    # A 2 s tolerance bridges the missing snapshot: 4 s and 5 s take 2 s as their reference.
    tolerant = replace(WINDOWS_2S, gap_tolerance=pd.Timedelta(seconds=2))
    bridged = compute_features(regular_book([0, 1, 2, 4, 5, 6, 7]), tolerant)
    assert bridged["ret_short"].notna().tolist() == [False, False, True, True, True, True, True]
    assert bridged["ret_short"].iloc[4] == pytest.approx((100 + 5 / 2) / (100 + 2 / 2) - 1)
    # 0 1 5 6 7: 1 -> 5 s is more than 2 s apart; the first row whose window lies after it is 7 s (reference 5 s).
    sparse = compute_features(regular_book([0, 1, 5, 6, 7]), tolerant)
    assert sparse["ret_short"].notna().tolist() == [False, False, False, False, True]


def test_after_a_seven_minute_gap_a_ten_second_return_is_nan_not_a_seven_minute_one():
    seconds = [*range(0, 60), *range(480, 540)]  # a minute, nothing for 7 minutes, a minute
    features = compute_features(regular_book(seconds))
    after = features.iloc[60:]
    ten_seconds_on = after["ts"] - after["ts"].iloc[0]
    flow = ["ofi", "ret_short"]
    # Nothing spans the gap: the 10 s features come back 10 s after it, realised volatility 60 s after.
    assert after.loc[ten_seconds_on < pd.Timedelta(seconds=10), flow].isna().all().all()
    assert after.loc[ten_seconds_on >= pd.Timedelta(seconds=10), flow].notna().all().all()
    assert after["realized_vol"].isna().sum() == 60
    # The same rows computed from a book that starts after the gap (a day computed alone) come out the same.
    alone = compute_features(regular_book(seconds[60:])).reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, after.reset_index(drop=True))


def test_rows_come_out_the_same_whatever_history_before_their_warmup_is_given():
    arrays = random_book(4_000, seed=11)
    config = FeatureConfig(gap_tolerance=pd.Timedelta(milliseconds=1_500))
    full = compute_features(arrays, config)
    for cut in (500, 1_777, 3_000):
        first = int(np.searchsorted(arrays.ts, arrays.ts[cut] - config.warmup.value))
        tail = BookArrays(*(a[first:] for a in (arrays.ts, arrays.bid_px, arrays.bid_qty, arrays.ask_px, arrays.ask_qty)))
        part = compute_features(tail, config).iloc[cut - first:].reset_index(drop=True)
        expected = full.iloc[cut:].reset_index(drop=True)
        # The same NaNs, and the same values but for the rounding of the running sums.
        pd.testing.assert_frame_equal(part, expected, rtol=1e-9)


def test_gaps_are_between_usable_snapshots():
    ts = T0.value + np.array([0, 1, 2, 5, 6, 8], dtype=np.int64) * 10**9
    assert snapshot_gaps(ts, pd.Timedelta(seconds=1)).tolist() == [3, 5]
    assert snapshot_gaps(ts, pd.Timedelta(seconds=2)).tolist() == [3]
    assert snapshot_gaps(ts[:1], pd.Timedelta(seconds=1)).tolist() == []
    bid, ask = np.array([100.0, 100.0, 101.0, np.nan]), np.array([100.5, 100.0, 100.5, 101.0])
    np.testing.assert_array_equal(usable_mid(bid, ask), [100.25, 100.0, np.nan, np.nan])


def test_a_days_gaps_are_those_ending_on_it():
    day = T0 + pd.Timedelta(seconds=4)
    gaps, first_without_previous = day_gaps(regular_book([0, 1, 2, 5, 6, 12, 13]), "BTCUSDT", day)
    at = [T0 + pd.Timedelta(seconds=s) for s in (2, 5, 6, 12)]
    assert gaps == [SnapshotGap("BTCUSDT", at[0], at[1]), SnapshotGap("BTCUSDT", at[2], at[3])]
    assert first_without_previous is None
    assert str(gaps[1]) == "BTCUSDT 2023-04-05 06:00:06 -> 2023-04-05 06:00:12 (0 days 00:00:06)"
    # A book read that starts with the day: whether its first snapshot ends a gap lies before the read.
    gaps, first_without_previous = day_gaps(regular_book([5, 6, 12]), "BTCUSDT", day)
    assert gaps == [SnapshotGap("BTCUSDT", at[2], at[3])] and first_without_previous == at[1]


def test_feature_config_rejects_bad_windows_and_tolerance():
    with pytest.raises(ValueError, match="gap_tolerance"):
        FeatureConfig(gap_tolerance=pd.Timedelta(seconds=-1))
    with pytest.raises(ValueError, match="vol_window"):
        FeatureConfig(vol_window=pd.Timedelta(0))
    assert FeatureConfig().warmup == pd.Timedelta(seconds=61)


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
