"""Triple-barrier labels and volatility targets: hand-worked paths, edge cases, and the real klines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from winiswin_pipelines.labels import get_daily_vol, get_return_vol, get_triple_barrier_label
from winiswin_pipelines.labels.days import LabelConfig, label_events
from winiswin_pipelines.marketdata.klines import read_kline_csv
from winiswin_pipelines.marketdata.samples import BTCUSDT_5M_2023_04_CSV


def bars(*closes: float, start: str = "2024-01-01", freq: str = "1min") -> pd.Series:
    return pd.Series(closes, index=pd.date_range(start, periods=len(closes), freq=freq, tz="UTC"), dtype=float)


def flat(price: pd.Series, value: float) -> pd.Series:
    return pd.Series(value, index=price.index)


def first_row(result: pd.DataFrame) -> tuple:
    row = result.iloc[0]
    return row["label"], row["barrier"], row["t1"], round(row["ret"], 12)


# Barriers at +/-2 % from the event close (vol 0.02, pt_sl 1, 1).
def test_upper_barrier_first():
    price = bars(100, 101, 102.5, 97, 100)
    result = get_triple_barrier_label(price, flat(price, 0.02), 4, events=price.index[:1])
    assert first_row(result) == (1, "upper", price.index[2], 0.025)


def test_lower_barrier_first():
    price = bars(100, 99, 97.9, 103, 100)
    result = get_triple_barrier_label(price, flat(price, 0.02), 4, events=price.index[:1])
    assert first_row(result) == (-1, "lower", price.index[2], round(97.9 / 100 - 1, 12))


def test_vertical_barrier_when_no_touch():
    price = bars(100, 101, 99, 101.5, 102.5)
    result = get_triple_barrier_label(price, flat(price, 0.02), 3, events=price.index[:1])
    # Bar 4 (102.5) would touch, but the vertical barrier is bar 3.
    assert first_row(result) == (0, "vertical", price.index[3], 0.015)


def test_touch_on_the_vertical_bar_counts_as_the_horizontal_barrier():
    price = bars(100, 101, 102.5)
    result = get_triple_barrier_label(price, flat(price, 0.02), 2, events=price.index[:1])
    assert first_row(result) == (1, "upper", price.index[2], 0.025)


def test_barriers_are_strict_inequalities():
    price = bars(64, 80, 48, 64)  # exactly +25 % and -25 % (exact in binary): not beyond the barriers
    result = get_triple_barrier_label(price, flat(price, 0.25), 3, events=price.index[:1])
    assert first_row(result) == (0, "vertical", price.index[3], 0.0)


def test_pt_and_sl_multipliers_apply_as_given_and_zero_disables():
    price = bars(100, 98.5, 103.5, 100)
    vol = flat(price, 0.01)
    assert first_row(get_triple_barrier_label(price, vol, 3, pt_sl=(1, 2), events=price.index[:1]))[:2] == (1, "upper")
    assert first_row(get_triple_barrier_label(price, vol, 3, pt_sl=(1, 1), events=price.index[:1]))[:2] == (-1, "lower")
    disabled = get_triple_barrier_label(price, vol, 3, pt_sl=(0, 0), events=price.index[:1])
    assert first_row(disabled)[:2] == (0, "vertical")


def test_side_flips_the_path():
    price = bars(100, 101, 102.5, 97, 100)
    short = pd.Series(-1.0, index=price.index[:1])
    result = get_triple_barrier_label(price, flat(price, 0.02), 4, events=price.index[:1], side=short)
    # For a short, the rise to 102.5 is a loss beyond the lower barrier; ret is times side.
    assert first_row(result) == (-1, "lower", price.index[2], -0.025)


def test_min_ret_and_missing_vol_skip_events():
    price = bars(100, 101, 102, 103, 104)
    vol = pd.Series([0.001, 0.02, np.nan, 0.02, 0.02], index=price.index)
    result = get_triple_barrier_label(price, vol, 1, min_ret=0.001)
    # Bar 0: vol not above min_ret; bar 2: no vol; bar 4: vertical beyond the data.
    assert list(result.index) == [price.index[1], price.index[3]]


def test_events_subset_and_every_bar_by_default():
    price = bars(100, 103, 100, 97, 100, 100)
    vol = flat(price, 0.02)
    everything = get_triple_barrier_label(price, vol, 2)
    subset = get_triple_barrier_label(price, vol, 2, events=[price.index[3], price.index[1]])
    assert list(everything.index) == list(price.index[:4])
    pd.testing.assert_frame_equal(subset, everything.loc[[price.index[1], price.index[3]]])
    assert list(everything["label"]) == [1, -1, -1, 1]


def test_timedelta_horizon_uses_the_first_bar_at_or_after_t0_plus_horizon():
    index = pd.DatetimeIndex(
        ["2024-01-01 00:00", "2024-01-01 00:05", "2024-01-01 00:20", "2024-01-01 00:25"], tz="UTC"
    )
    price = pd.Series([100.0, 100.5, 101.0, 103.5], index=index)
    result = get_triple_barrier_label(price, flat(price, 0.02), pd.Timedelta(minutes=10))
    # t0 00:00 -> barrier at 00:20 (first bar >= 00:10, the 00:10/00:15 bars are missing).
    assert result.loc[index[0], "t1"] == index[2] and result.loc[index[0], "label"] == 0
    # t0 00:05 -> 00:20 too; t0 00:20 -> barrier 00:30 lies beyond the data, but 00:25 touched.
    assert result.loc[index[1], "t1"] == index[2]
    assert result.loc[index[2], "barrier"] == "upper" and result.loc[index[2], "t1"] == index[3]
    assert index[3] not in result.index  # unfinished: no label until later data


def test_unfinished_events_get_a_label_once_later_data_arrives():
    full = bars(100, 100.5, 100.2, 100.4, 99.8, 100.1, 100.3)
    vol = flat(full, 0.02)
    early = get_triple_barrier_label(full.iloc[:5], vol, 3)
    later = get_triple_barrier_label(full, vol, 3)
    assert list(early.index) == list(full.index[:2])
    pd.testing.assert_frame_equal(early, later.iloc[:2])
    assert list(later.index) == list(full.index[:4])


def test_result_columns_and_types():
    price = bars(100, 101, 99, 102, 100)
    result = get_triple_barrier_label(price, flat(price, 0.015), 2)
    assert list(result.columns) == ["label", "ret", "t1", "barrier"]
    assert result.index.name == "t0" and str(result.index.tz) == "UTC" and str(result["t1"].dt.tz) == "UTC"
    assert set(result["label"]) <= {-1, 0, 1} and result["label"].dtype == np.int8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": 0}, "horizon"),
        ({"horizon": pd.Timedelta(0)}, "horizon"),
        ({"pt_sl": (1.0, -1.0)}, "pt_sl"),
        ({"min_ret": -0.1}, "min_ret"),
        ({"events": [pd.Timestamp("2030-01-01", tz="UTC")]}, "not bars of price"),
        ({"side": pd.Series(0.0, index=bars(1, 2, 3).index)}, "side"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    price = bars(100, 101, 102)
    arguments = {"horizon": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        get_triple_barrier_label(price, flat(price, 0.01), **arguments)


def test_bad_prices_raise_clear_errors():
    naive = pd.Series([1.0, 2.0], index=pd.date_range("2024-01-01", periods=2, freq="1min"))
    with pytest.raises(ValueError, match="timezone-aware"):
        get_triple_barrier_label(naive, naive, 1)
    price = bars(100, -1, 102)
    with pytest.raises(ValueError, match="finite and positive.*2024-01-01 00:01"):
        get_triple_barrier_label(price, flat(price, 0.01), 1)


def snippet_3_1(close: pd.Series, span0: int = 100) -> pd.Series:
    """AFML snippet 3.1 as printed (getDailyVol); `.values` -> `.array` keeps the time zone in pandas 3."""
    df0 = close.index.searchsorted(close.index - pd.Timedelta(days=1))
    df0 = df0[df0 > 0]
    df0 = pd.Series(close.index[df0 - 1], index=close.index[close.shape[0] - df0.shape[0]:])
    df0 = close.loc[df0.index] / close.loc[df0.array].values - 1
    return df0.ewm(span=span0).std()


@pytest.fixture(scope="module")
def april_closes() -> pd.Series:
    klines = read_kline_csv(BTCUSDT_5M_2023_04_CSV, symbol="BTCUSDT", interval="5m")
    return pd.Series(klines["close"].to_numpy(), index=pd.DatetimeIndex(klines["open_time"]), name="close")


def test_get_daily_vol_is_snippet_3_1(april_closes):
    vol = get_daily_vol(april_closes)
    pd.testing.assert_series_equal(vol, snippet_3_1(april_closes), check_freq=False)
    assert vol.index[0] > april_closes.index[0] + pd.Timedelta(days=1)


def test_get_return_vol_on_a_short_lookback(april_closes):
    vol = get_return_vol(april_closes, pd.Timedelta(hours=1), span=20)
    returns = april_closes / april_closes.shift(13) - 1  # the bar strictly before t - 1 h, on a 5-min grid
    expected = returns.loc["2023-04-02":"2023-04-06"].ewm(span=20).std()
    assert np.allclose(vol.loc["2023-04-02":"2023-04-06"].iloc[200:], expected.iloc[200:], rtol=1e-3)


def reference_labels(price, vol, horizon, pt_sl, side=None) -> pd.DataFrame:
    """A plain per-event loop over positions, written independently of the package."""
    closes, times, rows = price.to_numpy(), price.index, []
    for i, t0 in enumerate(times):
        target = vol.get(t0, np.nan)
        if not target > 0:
            continue
        direction = 1.0 if side is None else side[t0]
        if isinstance(horizon, int):
            vertical = i + horizon
        else:
            vertical = int(np.searchsorted(times, t0 + horizon))
        touch = None
        for j in range(i, min(vertical, len(closes) - 1) + 1):
            move = (closes[j] / closes[i] - 1) * direction
            if pt_sl[0] > 0 and move > pt_sl[0] * target:
                touch = (j, 1, "upper")
                break
            if pt_sl[1] > 0 and move < -pt_sl[1] * target:
                touch = (j, -1, "lower")
                break
        if touch is None and vertical < len(closes):
            touch = (vertical, 0, "vertical")
        if touch is not None:
            j, label, barrier = touch
            rows.append((t0, label, (closes[j] / closes[i] - 1) * direction, times[j], barrier))
    frame = pd.DataFrame(rows, columns=["t0", "label", "ret", "t1", "barrier"]).set_index("t0")
    return frame.astype({"label": np.int8})


@pytest.mark.parametrize(
    ("horizon", "pt_sl", "with_side"),
    [(12, (1.0, 1.0), False), (pd.Timedelta(hours=6), (2.0, 1.0), False), (48, (0.5, 1.5), True)],
)
def test_real_april_2023_klines_agree_with_a_reference_loop(april_closes, horizon, pt_sl, with_side):
    # Two days around the missing 2023-04-07 make the Timedelta horizon cross the gap.
    closes = april_closes.loc["2023-04-03":"2023-04-09"]
    vol = get_daily_vol(april_closes).reindex(closes.index)
    side = np.sign(closes - closes.shift(12)).replace(0, 1).fillna(1) if with_side else None
    result = get_triple_barrier_label(closes, vol, horizon, pt_sl=pt_sl, side=side)
    expected = reference_labels(closes, vol, horizon, pt_sl, side)
    assert len(result) > 1500
    assert set(result["label"]) == {-1, 0, 1}
    pd.testing.assert_frame_equal(result, expected, check_index_type=False, check_names=False)


@pytest.mark.parametrize("horizon", [3, 17, pd.Timedelta(minutes=40)])
def test_few_events_and_every_bar_give_the_same_labels(horizon):
    # A handful of events takes the path-matrix search, every bar the sparse tables: both are exact.
    rng = np.random.default_rng(3)
    price = pd.Series(100 * np.exp(np.cumsum(rng.normal(0, 0.002, 600))),
                      index=pd.date_range("2024-01-01", periods=600, freq="1min", tz="UTC"))
    vol = pd.Series(rng.uniform(0.002, 0.01, 600), index=price.index)
    side = pd.Series(rng.choice([-1.0, 1.0], 600), index=price.index)
    events = price.index[rng.choice(600, 5, replace=False)]
    every_bar = get_triple_barrier_label(price, vol, horizon, pt_sl=(1.0, 0.5), side=side)
    few = get_triple_barrier_label(price, vol, horizon, pt_sl=(1.0, 0.5), side=side, events=events)
    pd.testing.assert_frame_equal(few, every_bar.loc[every_bar.index.intersection(events)])
    pd.testing.assert_frame_equal(every_bar, reference_labels(price, vol, horizon, (1.0, 0.5), side),
                                  check_index_type=False, check_names=False)


def test_get_return_vol_leaves_out_returns_across_a_gap():
    # A 1 s grid with 30 s missing: returns over 5 s are taken against the bar strictly before t - 5 s.
    times = pd.DatetimeIndex([*pd.date_range("2024-01-01", periods=20, freq="1s", tz="UTC"),
                              *pd.date_range("2024-01-01 00:00:50", periods=20, freq="1s", tz="UTC")])
    price = pd.Series(100 + np.arange(40.0), index=times)
    lookback = pd.Timedelta(seconds=5)
    everything = get_return_vol(price, lookback, span=5)
    fresh = get_return_vol(price, lookback, span=5, tolerance=pd.Timedelta(seconds=1))
    after_gap = times[20:]
    # Without a tolerance the first 6 bars after the gap take their return across it; with one, they have none.
    assert everything.index.intersection(after_gap).size == 20
    assert list(fresh.index.intersection(after_gap)) == list(after_gap[6:])
    # The others are the same returns: the same volatility up to the gap.
    pd.testing.assert_series_equal(fresh.loc[: times[19]], everything.loc[: times[19]])


def one_second_bars(*closes: float, missing: tuple[int, ...] = ()) -> pd.Series:
    """Closes on a 1 s grid, the positions in `missing` left out (a gap)."""
    index = pd.date_range("2024-01-01", periods=len(closes), freq="1s", tz="UTC")
    keep = [i for i in range(len(closes)) if i not in missing]
    return pd.Series(np.asarray(closes, dtype=float)[keep], index=index[keep])


def labels_by_second(mid: pd.Series, config: LabelConfig, events=None) -> pd.DataFrame:
    labels = label_events(mid, mid.index if events is None else events, config).set_index("ts")
    return labels.set_axis((labels.index - pd.Timestamp("2024-01-01", tz="UTC")).total_seconds().astype(int))


# Six moves give a volatility target, then flat prices touch no barrier.
WARM_UP = (100, 101, 99, 102, 98, 100)


def test_label_events_report_paths_into_a_gap_as_gap_not_pending():
    config = LabelConfig(horizon=pd.Timedelta(seconds=3), vol_span=3, vol_warmup=pd.Timedelta(0))
    mid = one_second_bars(*WARM_UP, *[100] * 12, missing=(12, 13))  # nothing at 12 s and 13 s
    labels = labels_by_second(mid, config)
    # The first volatility target needs two 3 s returns (against the bar before t - 3 s): 5 s. At 16 s and
    # 17 s that bar lies across the gap: no return, the target stays the one before.
    assert labels.loc[:4, "skipped"].all() and not labels.loc[5:, "skipped"].any()
    # 8 s: its vertical barrier 11 s comes before the gap; 9-11 s: their paths need the missing bars.
    assert labels.loc[5:8, "label_barrier"].tolist() == ["vertical"] * 4
    blocked = labels.loc[9:11]
    assert blocked["label_barrier"].tolist() == ["gap"] * 3
    assert blocked["label"].isna().all() and blocked["label_ret"].isna().all() and blocked["label_t1"].isna().all()
    # 14 s: after the gap, labelled; 15-17 s: waiting for later prices (pending: no barrier yet).
    assert labels.loc[14, "label_barrier"] == "vertical"
    assert labels.loc[15:, "label_barrier"].isna().all() and labels.loc[15:, "label"].isna().all()


def test_a_touch_before_the_gap_is_a_label_and_a_pending_path_that_reaches_a_gap_is_gap():
    config = LabelConfig(horizon=pd.Timedelta(seconds=5), vol_span=3, vol_warmup=pd.Timedelta(0))
    closes = (*WARM_UP, 100, 100, 103, 100, 100, 100)
    mid = one_second_bars(*closes, missing=(9,))  # the price jumps at 8 s, then nothing at 9 s
    labels = labels_by_second(mid, config)
    assert labels.loc[:6, "skipped"].all() and not labels.loc[7:, "skipped"].any()
    # 7 s touches the upper barrier at 8 s, before the gap: labelled.
    assert (labels.loc[7, "label_barrier"], labels.loc[7, "label"]) == ("upper", 1)
    # 8 s would touch the lower barrier at 10 s, after the gap: blocked, not labelled.
    assert labels.loc[8, "label_barrier"] == "gap" and labels.loc[8, "label"] is None
    # 10 s and 11 s: after the gap, waiting for later prices.
    assert labels.loc[10:, "label_barrier"].isna().all() and not labels.loc[10:, "skipped"].any()
    # Without a barrier in reach, a path that has reached a gap is blocked for good, whatever comes later.
    flat = one_second_bars(*WARM_UP, *[100] * 6, missing=(9,))
    assert labels_by_second(flat, config).loc[8, "label_barrier"] == "gap"
    later = one_second_bars(*WARM_UP, *[100] * 16, missing=(9,))
    assert labels_by_second(later, config, events=later.index[8:9]).loc[8, "label_barrier"] == "gap"


# --- net of costs -------------------------------------------------------------------------------------

def test_a_move_that_does_not_pay_its_costs_is_no_horizontal_label():
    price = bars(100, 100.08, 100.3, 100.1)
    vol = flat(price, 0.0005)  # barriers at +/-0.05 %: 100.08 touches the upper one
    assert first_row(get_triple_barrier_label(price, vol, 3, events=price.index[:1]))[:2] == (1, "upper")
    # A round trip costing 0.2 % widens both barriers to 0.2 %: 100.08 is not enough, 100.3 is.
    net = get_triple_barrier_label(price, vol, 3, events=price.index[:1], min_move=0.002)
    assert first_row(net) == (1, "upper", price.index[2], 0.003)
    # Per event, aligned with the prices; a cost above every move leaves the vertical barrier.
    costs = pd.Series([0.004, np.nan, np.nan, np.nan], index=price.index)
    assert first_row(get_triple_barrier_label(price, vol, 3, events=price.index[:1], min_move=costs))[:2] == \
        (0, "vertical")
    with pytest.raises(ValueError, match="min_move"):
        get_triple_barrier_label(price, vol, 3, min_move=-0.1)


def test_label_events_net_of_costs_record_the_round_trip_cost_of_each_event():
    from winiswin_pipelines.labels.days import RoundTripCost

    mid = one_second_bars(*WARM_UP, 100, 106, 100, 100, 100, 100)
    spread = pd.Series(0.0002, index=mid.index)  # 2 bp
    gross = LabelConfig(horizon=pd.Timedelta(seconds=3), vol_span=3, vol_warmup=pd.Timedelta(0))
    net = LabelConfig(horizon=pd.Timedelta(seconds=3), vol_span=3, vol_warmup=pd.Timedelta(0),
                      costs=RoundTripCost(taker_fee=0.05, spread_share=0.5))  # 10.01 %: beyond every move
    gross_labels = label_events(mid, mid.index, gross)
    net_labels = label_events(mid, mid.index, net, spread=spread)
    assert gross_labels["label_cost"].isna().all()
    assert np.allclose(net_labels["label_cost"], 2 * 0.05 + 0.5 * 0.0002)
    horizontal = gross_labels["label_barrier"].isin(["upper", "lower"])
    assert horizontal.any() and not net_labels["label_barrier"].isin(["upper", "lower"]).any()
    with pytest.raises(ValueError, match="spread"):
        label_events(mid, mid.index, net)
