"""Features and labels do not depend on how the days are cut into runs, nor on the order of the runs.

The book comes from the bundled captures (BTCUSDT 2023-04-04/05, BTCUSDT and ETHUSDT 2024-07-18/19),
with gaps planted: 50 s across a midnight, 7 minutes across another (longer than every window and
than the old warm-up read), a few seconds inside a day, and a run of crossed books across midnight.
"""

from __future__ import annotations

import datetime as dt
import random

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from winiswin_pipelines.db.bulk import copy_upsert, dataframe_rows
from winiswin_pipelines.defs import features as training
from winiswin_pipelines.defs.partitions import day_runs, range_tags
from winiswin_pipelines.features import FEATURE_COLUMNS, book_arrays_from_frame, compute_features
from winiswin_pipelines.features.days import FEATURES
from winiswin_pipelines.labels.days import LABELS
from winiswin_pipelines.marketdata import samples
from winiswin_pipelines.marketdata.capture import read_capture
from winiswin_pipelines.marketdata.orderbook import BOOK_SNAPSHOT_COLUMNS, rebuild_book_snapshots
from winiswin_pipelines.resources import ColdStorageResource, PostgresResource

DATA_DAYS = [dt.date(2023, 4, 4), dt.date(2023, 4, 5), dt.date(2024, 7, 18), dt.date(2024, 7, 19)]
CAPTURES = {
    ("BTCUSDT", 2023): [samples.CAPTURE_BTCUSDT_20230404, samples.CAPTURE_BTCUSDT_20230405],
    ("BTCUSDT", 2024): [samples.CAPTURE_BTCUSDT_20240718, samples.CAPTURE_BTCUSDT_20240719],
    ("ETHUSDT", 2024): [samples.CAPTURE_ETHUSDT_20240718, samples.CAPTURE_ETHUSDT_20240719],
}
MIDNIGHT_2023, MIDNIGHT_2024 = pd.Timestamp("2023-04-05", tz="UTC"), pd.Timestamp("2024-07-19", tz="UTC")
SECOND = pd.Timedelta(seconds=1)
# (symbol, last usable snapshot before, first after): the gaps the features must report.
PLANTED_GAPS = [
    ("BTCUSDT", MIDNIGHT_2023 - 20 * SECOND, MIDNIGHT_2023 + 30 * SECOND),
    ("BTCUSDT", MIDNIGHT_2024 - 140 * SECOND, MIDNIGHT_2024 + 285 * SECOND),
    ("ETHUSDT", MIDNIGHT_2024 - 2 * SECOND, MIDNIGHT_2024 + 2 * SECOND),  # crossed books in between
    ("ETHUSDT", MIDNIGHT_2024 + 120 * SECOND, MIDNIGHT_2024 + 126 * SECOND),
]
TABLE_COLUMNS = ("symbol", "ts", *FEATURE_COLUMNS, "label", "label_ret", "label_t1", "label_barrier")


def _without(frame: pd.DataFrame, symbol: str, after: pd.Timestamp, before: pd.Timestamp) -> pd.DataFrame:
    inside = (frame["symbol"] == symbol) & (frame["exchange_time"] > after) & (frame["exchange_time"] < before)
    return frame[~inside]


@pytest.fixture(scope="module")
def book() -> pd.DataFrame:
    """The captures' book snapshots (1 s grid) with the planted gaps and crossed books."""
    frames = [
        rebuild_book_snapshots((m for path in paths for m in read_capture(path)), symbol=symbol,
                               cadence=dt.timedelta(seconds=1), depth=10)
        for (symbol, _), paths in CAPTURES.items()
    ]
    frame = pd.concat(frames, ignore_index=True)
    for symbol, start, end in PLANTED_GAPS:
        if symbol == "ETHUSDT" and start == MIDNIGHT_2024 - 2 * SECOND:
            crossed = (frame["symbol"] == symbol) & (frame["exchange_time"] > start) & (frame["exchange_time"] < end)
            frame.loc[crossed, "best_bid"] = frame.loc[crossed, "best_ask"] + 0.5
        else:
            frame = _without(frame, symbol, start, end)
    return frame.reset_index(drop=True)


@pytest.fixture
def resources(db, database_url, book, tmp_path_factory) -> dict:
    with db.engine.begin() as conn:
        copy_upsert(conn, "book_snapshots", BOOK_SNAPSHOT_COLUMNS, dataframe_rows(book, BOOK_SNAPSHOT_COLUMNS),
                    conflict_columns=("symbol", "exchange_time"))
    return {"postgres": PostgresResource(database_url=database_url),
            "cold_storage": ColdStorageResource(local_dir=str(tmp_path_factory.mktemp("cold")))}


def materialize(assets, resources, instance, first: dt.date, last: dt.date) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, resources=resources, instance=instance, tags=range_tags(first, last))


def table(db) -> pd.DataFrame:
    """Every row of training_features but the *_computed_at times, by symbol and time."""
    with db.engine.connect() as conn:
        return pd.read_sql_query(text(f"SELECT {', '.join(TABLE_COLUMNS)} FROM training_features ORDER BY symbol, ts"),
                                 conn)


def reset(db) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("TRUNCATE training_features"))


def random_runs(rng: random.Random) -> list[tuple[str, dt.date, dt.date]]:
    """A random cut of the days into ranges, each range's features and labels as runs of their own, in
    a random order (labels may come before the features of their day or of the day before).

    The ranges never span the 15 months without data: Dagster records a materialization per day of a
    range, which would cost the test minutes (the computation of an empty day takes a millisecond).
    """
    ranges = []
    for first, last in day_runs(DATA_DAYS):
        days = [first + dt.timedelta(days=k) for k in range((last - first).days + 1)]
        cuts = sorted(rng.sample(range(1, len(days)), rng.randint(0, len(days) - 1)))
        bounds = [0, *cuts, len(days)]
        ranges += [(days[a], days[b - 1]) for a, b in zip(bounds, bounds[1:], strict=False)]
    runs = [(asset, first, last) for first, last in ranges for asset in ("features", "labels")]
    rng.shuffle(runs)
    return runs


ASSETS = {"features": training.microstructure_features, "labels": training.triple_barrier_labels}


def feature_metadata(results: list[dg.ExecuteInProcessResult]) -> tuple[int, list[str]]:
    """The gaps reported by the features runs: their count, and their spans line by line, sorted."""
    metadata = [r.asset_materializations_for_node("microstructure_features")[0].metadata for r in results]
    spans = [line for m in metadata for line in m["gap_spans"].value.splitlines() if line != "none"]
    return sum(m["gaps"].value for m in metadata), sorted(spans)


def test_one_run_equals_any_partitioning_of_the_days_in_any_order(db, resources, book, dagster_instance):
    reference_runs = [
        materialize([training.microstructure_features, training.triple_barrier_labels], resources, dagster_instance,
                    first, last)
        for first, last in day_runs(DATA_DAYS)
    ]
    reference = table(db)
    reported = feature_metadata(reference_runs)
    assert_reference_is_right(reference, reported, book)

    day_by_day = [(asset, day, day) for day in DATA_DAYS for asset in ASSETS]
    random.Random(0).shuffle(day_by_day)
    for runs in [day_by_day, *(random_runs(random.Random(seed)) for seed in (1, 2))]:
        reset(db)
        results = [(asset, materialize([ASSETS[asset]], resources, dagster_instance, first, last))
                   for asset, first, last in runs]
        # NaN-aware and exact: every feature and label column, the same rows.
        pd.testing.assert_frame_equal(table(db), reference, check_exact=True, obj=f"runs {runs}")
        assert feature_metadata([r for asset, r in results if asset == "features"]) == reported


def assert_reference_is_right(reference: pd.DataFrame, reported: tuple[int, list[str]], book: pd.DataFrame) -> None:
    # Every gap reported once, by the day it ends on; the last one is BTCUSDT's 15 months without data.
    btc_2023_end, btc_2024_start = (
        book.loc[(book["symbol"] == "BTCUSDT") & (book["exchange_time"] < MIDNIGHT_2024 - 2 * 86_400 * SECOND),
                 "exchange_time"].max(),
        book.loc[(book["symbol"] == "BTCUSDT") & (book["exchange_time"] > MIDNIGHT_2024 - 2 * 86_400 * SECOND),
                 "exchange_time"].min(),
    )
    count, spans = reported
    expected_gaps = [*PLANTED_GAPS, ("BTCUSDT", btc_2023_end, btc_2024_start)]
    assert count == len(spans) == len(expected_gaps)
    for symbol, start, end in expected_gaps:
        assert any(f"{symbol} {start:%Y-%m-%d %H:%M:%S} -> {end:%Y-%m-%d %H:%M:%S}" in line for line in spans)

    # The features are those of one pass over each capture's whole book (the gaps included):
    # the same NaNs, the same values but for the rounding of the running sums.
    for (symbol, year), _ in CAPTURES.items():
        snapshots = book[(book["symbol"] == symbol) & (book["exchange_time"].dt.year == year)]
        expected = compute_features(book_arrays_from_frame(snapshots, levels=FEATURES.depth_levels), FEATURES)
        expected = expected[expected["book_state"].isin(["ok", "locked"])].reset_index(drop=True)
        got = reference[(reference["symbol"] == symbol) & (reference["ts"].dt.year == year)].reset_index(drop=True)
        assert list(got["ts"]) == list(expected["ts"])
        pd.testing.assert_frame_equal(got[list(FEATURE_COLUMNS)], expected[list(FEATURE_COLUMNS)], rtol=1e-9)

    # After the 7-minute gap, nothing spans it: the 10 s features come back 10 s later.
    btc = reference[(reference["symbol"] == "BTCUSDT") & (reference["ts"] >= MIDNIGHT_2024)].set_index("ts")
    resumed = btc.index[0]
    assert resumed == MIDNIGHT_2024 + 285 * SECOND
    assert btc.loc[: resumed + 9 * SECOND, ["ofi", "ret_short", "realized_vol"]].isna().all().all()
    assert btc.loc[resumed + 10 * SECOND :, ["ofi", "ret_short"]].notna().all().all()

    # Labels: paths that reach a gap before a barrier are 'gap' (no label).
    gap = reference[reference["label_barrier"] == "gap"].set_index("ts")
    assert gap[["label", "label_ret", "label_t1"]].isna().all().all()
    btc_gap = gap[gap["symbol"] == "BTCUSDT"].index
    # Some paths into the gap at 23:59:40, and BTCUSDT 2023's last paths, into its 15 months without data.
    assert btc_gap[btc_gap <= MIDNIGHT_2023 - 20 * SECOND].size > 0
    assert btc_gap[btc_gap > btc_2023_end - LABELS.horizon].size > 30 and btc_gap.max() == btc_2023_end
    eth_gap = gap[gap["symbol"] == "ETHUSDT"].index
    assert eth_gap[eth_gap < MIDNIGHT_2024].size > 0 and (eth_gap <= MIDNIGHT_2024 + 120 * SECOND).all()
    # BTCUSDT 2024 has no 61 s of prices before its 7-minute gap: no volatility target, nothing to label there.
    btc_2024_day_one = (reference["symbol"] == "BTCUSDT") & reference["ts"].between(btc_2024_start, MIDNIGHT_2024)
    assert btc_2024_day_one.sum() > 30 and reference.loc[btc_2024_day_one, "label"].isna().all()
    labelled = reference.dropna(subset=["label"])
    assert len(labelled) > 600 and set(labelled["label_barrier"]) == {"upper", "lower", "vertical"}
    assert ((labelled["label_t1"] - labelled["ts"]) <= LABELS.horizon + LABELS.gap_tolerance).all()
    # ETHUSDT 2024 ends with no later data: its last minute is pending, not a gap.
    eth_last = reference[reference["symbol"] == "ETHUSDT"].tail(30)
    assert eth_last["label_barrier"].isna().all()
    assert np.isfinite(labelled["label_ret"]).all()
