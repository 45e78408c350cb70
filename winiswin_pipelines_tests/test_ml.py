"""winiswin_pipelines.ml: purged k-fold, walk-forward and uniqueness against plain loops and hand-worked cases.

Each rule is also written here as a plain Python/pandas loop that follows the words of issue 14
(and AFML snippets 4.1-4.2), and the vectorised code must agree with it on random labels whose
ends are not monotonic.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from winiswin_pipelines.ml import PurgedKFold, average_uniqueness, concurrent_events, walk_forward_split

BASE = pd.Timestamp("2024-01-01", tz="UTC")


def minutes(*offsets: int) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([BASE + pd.Timedelta(minutes=int(m)) for m in offsets])


def labels(t0: list[int], t1: list[int]) -> pd.Series:
    """Labels from minute offsets: index t0, values t1."""
    return pd.Series(minutes(*t1), index=minutes(*t0))


def random_labels(seed: int, n: int = 150) -> pd.Series:
    """Sorted starts with ties, lengths from 0 to long: ends that are not monotonic."""
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.integers(0, 3 * n, n))
    lengths = rng.geometric(0.08, n) - 1
    result = labels(starts.tolist(), (starts + lengths).tolist())
    assert not pd.Index(result).is_monotonic_increasing
    return result


# --- Plain-loop references, one sample at a time ---------------------------------------------------


def purged_kfold_loop(info: pd.Series, n_splits: int, pct_embargo: float) -> list[tuple[list[int], list[int]]]:
    """The rule of issue 14 word for word: window [t0_i, max t1 of the fold], strict inequalities, embargo."""
    t0, t1 = list(info.index), list(info)
    embargo = int(len(info) * pct_embargo)
    folds = []
    for block in np.array_split(np.arange(len(info)), n_splits):
        i, j = int(block[0]), int(block[-1]) + 1
        window_start, window_end = t0[i], max(t1[i:j])
        train, embargoed = [], 0
        for k in range(len(info)):
            if i <= k < j:
                continue
            if t0[k] > window_end:
                if embargoed < embargo:
                    embargoed += 1
                    continue
                train.append(k)
            elif t1[k] < window_start:
                train.append(k)
        folds.append((train, list(range(i, j))))
    return folds


def walk_forward_loop(info: pd.Series, test_fraction: float, pct_embargo: float) -> tuple[list[int], list[int]]:
    n = len(info)
    first_test = n - int(n * test_fraction)
    train = [k for k in range(first_test) if info.iloc[k] < info.index[first_test]]
    return train[: max(len(train) - int(n * pct_embargo), 0)], list(range(first_test, n))


def uniqueness_loop(t1: pd.Series, close_index: pd.Index) -> pd.Series:
    """AFML snippets 4.1-4.2 as printed: count labels per bar with .loc slices, then average 1/c per label."""
    count = pd.Series(0, index=close_index)
    for start, end in t1.fillna(close_index[-1]).items():
        count.loc[start:end] += 1
    weights = [(1.0 / count.loc[start:end]).mean() for start, end in t1.fillna(close_index[-1]).items()]
    return pd.Series(weights, index=t1.index)


def as_lists(splits) -> list[tuple[list[int], list[int]]]:
    return [(train.tolist(), test.tolist()) for train, test in splits]


# --- PurgedKFold -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("n_splits", "pct_embargo"), [(2, 0.0), (3, 0.01), (5, 0.05), (7, 0.2)])
def test_purged_kfold_matches_the_plain_loop_on_non_monotonic_ends(seed, n_splits, pct_embargo):
    info = random_labels(seed)
    splits = PurgedKFold(n_splits, info, pct_embargo).split(np.zeros((len(info), 2)))
    assert as_lists(splits) == purged_kfold_loop(info, n_splits, pct_embargo)


@pytest.mark.parametrize("seed", range(4))
def test_purged_kfold_folds_are_sorted_disjoint_and_never_overlap_a_test_label(seed):
    info = random_labels(seed, n=300)
    starts, ends = info.index.to_numpy(), info.to_numpy()
    tests = []
    for train, test in PurgedKFold(5, info, 0.03).split(info):
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) == 1)
        assert len(np.intersect1d(train, test)) == 0
        # No training interval [t0, t1] shares an instant with any test interval.
        overlaps = (starts[train, None] <= ends[None, test]) & (starts[None, test] <= ends[train, None])
        assert not overlaps.any()
        tests.append(test)
    assert np.concatenate(tests).tolist() == list(range(len(info)))


# Nine labels, one a minute; label 3 is long (ends at 7), so fold [3, 6) ends at 7, not at its last t1 (5).
HAND_T0 = [0, 1, 2, 3, 4, 5, 6, 7, 8]
HAND_T1 = [1, 3, 2, 7, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("as_numbers", [False, True])
def test_purged_kfold_purges_both_sides_by_hand(as_numbers):
    info = pd.Series(HAND_T1, index=HAND_T0) if as_numbers else labels(HAND_T0, HAND_T1)
    assert as_lists(PurgedKFold(3, info).split(info)) == [
        ([4, 5, 6, 7, 8], [0, 1, 2]),  # window [0, 3]: label 3 starts at 3, inside
        ([0, 2, 8], [3, 4, 5]),  # window [3, 7]: label 1 ends at 3 (not before), 6 and 7 start inside
        ([0, 1, 2, 4, 5], [6, 7, 8]),  # window [6, 8]: label 3 ends at 7, inside
    ]


def test_purged_kfold_embargoes_the_first_samples_after_the_window():
    info = labels(HAND_T0, HAND_T1)
    # int(9 * 0.25) = 2 embargoed after each window, none before it.
    assert as_lists(PurgedKFold(3, info, 0.25).split(info)) == [
        ([6, 7, 8], [0, 1, 2]),
        ([0, 2], [3, 4, 5]),  # only label 8 starts after the window, and it is embargoed
        ([0, 1, 2, 4, 5], [6, 7, 8]),
    ]
    # Labels that never overlap: the embargo alone removes samples, exactly int(N * pct) of them.
    point_labels = labels(list(range(10)), list(range(10)))
    assert as_lists(PurgedKFold(5, point_labels, 0.2).split(point_labels)) == [
        ([4, 5, 6, 7, 8, 9], [0, 1]),
        ([0, 1, 6, 7, 8, 9], [2, 3]),
        ([0, 1, 2, 3, 8, 9], [4, 5]),
        ([0, 1, 2, 3, 4, 5], [6, 7]),
        ([0, 1, 2, 3, 4, 5, 6, 7], [8, 9]),
    ]


def test_sklearn_cross_val_score_accepts_the_splitter_and_uniqueness_weights():
    info = random_labels(7, n=200)
    rng = np.random.default_rng(7)
    X = pd.DataFrame(rng.normal(size=(len(info), 3)), columns=["a", "b", "c"])
    y = (X["a"] + rng.normal(0, 0.5, len(info)) > 0).astype(int)
    cv = PurgedKFold(4, info, 0.02)
    assert cv.get_n_splits() == 4 and "PurgedKFold(n_splits=4" in repr(cv)
    scores = cross_val_score(LogisticRegression(), X, y, cv=cv)
    assert len(scores) == 4 and np.all((scores > 0.5) & (scores <= 1))
    bars = minutes(*range(int((info.max() - BASE).total_seconds() // 60) + 1))
    weights = average_uniqueness(info, bars).to_numpy()
    weighted = cross_val_score(LogisticRegression(), X, y, cv=cv, params={"sample_weight": weights})
    assert len(weighted) == 4 and np.all(np.isfinite(weighted))


@pytest.mark.parametrize(
    ("info", "n_splits", "pct_embargo", "message"),
    [
        (labels([0, 2, 1], [3, 3, 3]), 2, 0.0, "sorted increasing"),
        (labels([0, 1, 2], [0, 0, 2]), 2, 0.0, "t1 must not be before t0"),
        (labels([0, 1, 2], [1, 2, 3]), 1, 0.0, "n_splits must be an integer >= 2"),
        (labels([0, 1, 2], [1, 2, 3]), 4, 0.0, "more than the 3 samples"),
        (labels([0, 1, 2], [1, 2, 3]), 2, 1.0, "pct_embargo must be in"),
        (labels([0, 1, 2], [1, 2, 3]).where(lambda t1: t1.index < minutes(2)[0]), 2, 0.0, "missing ends"),
    ],
)
def test_purged_kfold_refuses_bad_input(info, n_splits, pct_embargo, message):
    with pytest.raises(ValueError, match=message):
        PurgedKFold(n_splits, info, pct_embargo)


def test_purged_kfold_refuses_mismatched_input():
    info = labels([0, 1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="X has 3 rows but samples_info_sets has 4"):
        next(PurgedKFold(2, info).split(np.zeros((3, 1))))
    with pytest.raises(TypeError, match="pandas Series"):
        PurgedKFold(2, info.to_frame("t1"))
    with pytest.raises(TypeError, match="tz-aware datetimes but t1 .* naive datetimes"):
        PurgedKFold(2, pd.Series(info.dt.tz_localize(None).to_numpy(), index=info.index))


# --- walk_forward_split --------------------------------------------------------------------------------


def test_walk_forward_tests_the_last_block_and_purges_labels_reaching_into_it():
    info = labels(HAND_T0, HAND_T1)
    # Last third tests; label 3 ends at 7, inside the test window [6, ...]: purged.
    train, test = walk_forward_split(info, 1 / 3)
    assert (train.tolist(), test.tolist()) == ([0, 1, 2, 4, 5], [6, 7, 8])
    train, test = walk_forward_split(info, 1 / 3, pct_embargo=0.25)  # drops the last 2 training samples
    assert (train.tolist(), test.tolist()) == ([0, 1, 2], [6, 7, 8])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("test_fraction", "pct_embargo"), [(0.2, 0.0), (0.3, 0.02), (0.5, 0.1)])
def test_walk_forward_matches_the_plain_loop(seed, test_fraction, pct_embargo):
    info = random_labels(seed)
    train, test = walk_forward_split(info, test_fraction, pct_embargo)
    assert (train.tolist(), test.tolist()) == walk_forward_loop(info, test_fraction, pct_embargo)


@pytest.mark.parametrize("test_fraction", [0.0, 0.1, 1.0, -0.5])
def test_walk_forward_refuses_a_fraction_that_leaves_no_test_or_no_train(test_fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        walk_forward_split(labels(HAND_T0, HAND_T1), test_fraction)


# --- average_uniqueness ----------------------------------------------------------------------------------


def test_uniqueness_of_two_overlapping_labels_by_hand():
    bars = minutes(0, 1, 2, 3, 4)
    t1 = labels([0, 1], [2, 4])  # concurrency 1, 2, 2, 1, 1
    assert concurrent_events(t1, bars).tolist() == [1, 2, 2, 1, 1]
    assert average_uniqueness(t1, bars).tolist() == pytest.approx([(1 + 0.5 + 0.5) / 3, (0.5 + 0.5 + 1 + 1) / 4])
    assert average_uniqueness(labels([0, 3], [2, 4]), bars).tolist() == [1.0, 1.0]  # no overlap: fully unique


# Bars with gaps; labels whose ends are not monotonic, one starting between bars, one ending between bars.
MLFINPY_BARS = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 22, 23, 24, 25]
MLFINPY_T0 = [0, 2, 3, 4, 5, 6, 8, 11, 12, 14, 17, 19, 22]
MLFINPY_T1 = [7, 3, 13, 5, 6, 20, 9, 12, 25, 16, 18, 24, 23]
# tW of mlfinpy 0.1.2 get_av_uniqueness_from_triple_barrier(events, close, num_threads=1) on these inputs.
MLFINPY_TW = [
    0.5238095238095238, 0.41666666666666663, 0.32407407407407407, 0.25, 0.25, 0.3333333333333333,
    0.3333333333333333, 0.29166666666666663, 0.3958333333333333, 0.3333333333333333, 0.3333333333333333,
    0.36666666666666664, 0.3333333333333333,
]
# The same with the label at 19 unfinished (t1 NaT; mlfinpy with naive times: it lives to the last bar).
MLFINPY_TW_OPEN = MLFINPY_TW[:8] + [0.3541666666666667, 0.3333333333333333, 0.3333333333333333, 0.38888888888888884,
                                    0.3333333333333333]


def test_uniqueness_equals_mlfinpy_tw():
    t1 = labels(MLFINPY_T0, MLFINPY_T1)
    result = average_uniqueness(t1, minutes(*MLFINPY_BARS))
    assert result.index.equals(t1.index)
    np.testing.assert_allclose(result.to_numpy(), MLFINPY_TW, rtol=1e-13)
    t1.iloc[-2] = pd.NaT
    np.testing.assert_allclose(average_uniqueness(t1, minutes(*MLFINPY_BARS)).to_numpy(), MLFINPY_TW_OPEN, rtol=1e-13)


@pytest.mark.parametrize("seed", range(6))
def test_uniqueness_matches_the_plain_loop_on_random_labels(seed):
    info = random_labels(seed, n=300)
    rng = np.random.default_rng(seed)
    last = int((info.max() - BASE).total_seconds() // 60)
    # Irregular bars: some label starts and ends fall between bars, some short labels hold no bar (NaN).
    bars = minutes(*np.sort(rng.choice(last + 1, size=last // 2, replace=False)))
    result = average_uniqueness(info, bars)
    expected = uniqueness_loop(info, bars)
    assert result.index.equals(info.index) and result.isna().any()
    np.testing.assert_allclose(result.to_numpy(), expected.to_numpy(), rtol=1e-12)
    counts = pd.Series(0, index=bars)
    for start, end in info.items():
        counts.loc[start:end] += 1
    assert concurrent_events(info, bars).tolist() == counts.tolist()


def test_uniqueness_refuses_bad_bars():
    t1 = labels([0, 1], [2, 4])
    with pytest.raises(ValueError, match="strictly increasing"):
        average_uniqueness(t1, minutes(0, 2, 1))
    with pytest.raises(TypeError, match="tz-aware datetimes but close_index holds naive"):
        average_uniqueness(t1, minutes(0, 1, 2).tz_localize(None))


def test_ml_imports_neither_dagster_nor_a_database():
    probe = ("import sys, winiswin_pipelines.ml; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'sqlalchemy', 'psycopg'}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
