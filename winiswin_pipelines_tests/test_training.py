"""Features, labels and the training dataset as Dagster assets on a real PostgreSQL, across midnight.

The book comes from the real capture of 2023-04-04 23:58:20 -> 2023-04-05 00:06:54 (BTCUSDT).
"""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from sqlalchemy import text

from winiswin_pipelines.archive import archive_old_data, read_history
from winiswin_pipelines.db.bulk import copy_upsert, dataframe_rows
from winiswin_pipelines.defs import features as training
from winiswin_pipelines.defs.partitions import DAY, day_runs, range_tags
from winiswin_pipelines.demo import steps
from winiswin_pipelines.features import FEATURE_COLUMNS, book_arrays_from_frame, compute_features
from winiswin_pipelines.features import days as feature_days
from winiswin_pipelines.features.days import FEATURES
from winiswin_pipelines.labels import get_return_vol, get_triple_barrier_label
from winiswin_pipelines.labels.days import LABELS
from winiswin_pipelines.marketdata.capture import read_capture
from winiswin_pipelines.marketdata.orderbook import BOOK_SNAPSHOT_COLUMNS, rebuild_book_snapshots
from winiswin_pipelines.marketdata.repository import snapshot_days
from winiswin_pipelines.marketdata.samples import CAPTURE_BTCUSDT_20230404, CAPTURE_BTCUSDT_20230405
from winiswin_pipelines.resources import ColdStorageResource, PostgresResource
from winiswin_pipelines.settings import PROJECT_DIR

FIRST, SECOND = "2023-04-04", "2023-04-05"
MIDNIGHT = pd.Timestamp(SECOND, tz="UTC")
FEATURE_CHECKS = [training.features_required_not_null, training.features_in_range, training.features_no_look_ahead]


@pytest.fixture(scope="module")
def snapshots() -> pd.DataFrame:
    messages = (m for path in (CAPTURE_BTCUSDT_20230404, CAPTURE_BTCUSDT_20230405) for m in read_capture(path))
    return rebuild_book_snapshots(messages, symbol="BTCUSDT", cadence=dt.timedelta(seconds=1), depth=10)


def store_book(db, snapshots: pd.DataFrame) -> None:
    with db.engine.begin() as conn:
        copy_upsert(conn, "book_snapshots", BOOK_SNAPSHOT_COLUMNS, dataframe_rows(snapshots, BOOK_SNAPSHOT_COLUMNS),
                    conflict_columns=("symbol", "exchange_time"))


def delete_book(db, start: pd.Timestamp, end: pd.Timestamp) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM book_snapshots WHERE exchange_time >= :start AND exchange_time < :end"),
                     {"start": start, "end": end})


@pytest.fixture
def resources(db, database_url, snapshots, tmp_path_factory) -> dict:
    store_book(db, snapshots)
    return {"postgres": PostgresResource(database_url=database_url),
            "cold_storage": ColdStorageResource(local_dir=str(tmp_path_factory.mktemp("cold")))}


def run(assets, resources, instance, partition=None, *, days=None, **kwargs) -> dg.ExecuteInProcessResult:
    tags = range_tags(*days) if days else None
    return dg.materialize(assets, resources=resources, instance=instance, partition_key=partition, tags=tags, **kwargs)


def stored(db, columns: str) -> pd.DataFrame:
    with db.engine.connect() as conn:
        return pd.read_sql_query(text(f"SELECT ts, {columns} FROM training_features ORDER BY ts"), conn).set_index("ts")


def expected_features(snapshots: pd.DataFrame) -> pd.DataFrame:
    """Features computed in memory over the whole capture at once."""
    return compute_features(book_arrays_from_frame(snapshots, levels=10), FEATURES).set_index("ts")


def expected_labels(mid: pd.Series) -> pd.DataFrame:
    config = LABELS
    vol = get_return_vol(mid, config.horizon, config.vol_span)
    return get_triple_barrier_label(mid, vol, config.horizon, pt_sl=config.pt_sl, min_ret=config.min_ret)


def assert_checks_passed(result: dg.ExecuteInProcessResult, count: int) -> None:
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == count and all(e.passed for e in evaluations), [
        (e.check_name, e.metadata) for e in evaluations if not e.passed
    ]


def test_features_at_the_start_of_a_day_use_the_previous_day(db, resources, snapshots, dagster_instance):
    result = run([training.microstructure_features, *FEATURE_CHECKS], resources, dagster_instance, SECOND)
    assert_checks_passed(result, 3)
    got = stored(db, ", ".join(FEATURE_COLUMNS))
    assert got.index.min() == MIDNIGHT  # only the partition's own day is written
    expected = expected_features(snapshots).loc[MIDNIGHT:, list(FEATURE_COLUMNS)]
    pd.testing.assert_frame_equal(got, expected, check_index_type=False, check_names=False, rtol=1e-12)
    # The first snapshot of the day has a full window of history from the day before.
    assert got.loc[MIDNIGHT, ["ofi", "ret_short", "realized_vol"]].notna().all()
    metadata = result.asset_materializations_for_node("microstructure_features")[0].metadata
    assert metadata["inserted"].value == len(got) and metadata["symbols"].value == "BTCUSDT"


def test_crossed_and_one_sided_books_are_skipped_and_counted(db, resources, dagster_instance):
    crossed, one_sided = MIDNIGHT + pd.Timedelta(milliseconds=300), MIDNIGHT + pd.Timedelta(milliseconds=600)
    with db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO book_snapshots (symbol, exchange_time, last_update_id, best_bid, best_bid_qty, best_ask, "
            "best_ask_qty, bid_prices, bid_sizes, ask_prices, ask_sizes) VALUES "
            "('BTCUSDT', :crossed, 1, 28150.0, 1, 28149.9, 1, '{28150.0}', '{1}', '{28149.9}', '{1}'), "
            "('BTCUSDT', :one_sided, 2, 28150.0, 1, NULL, NULL, '{28150.0}', '{1}', NULL, NULL)"
        ), {"crossed": crossed, "one_sided": one_sided})
    result = run([training.microstructure_features, *FEATURE_CHECKS], resources, dagster_instance, SECOND)
    assert_checks_passed(result, 3)
    metadata = result.asset_materializations_for_node("microstructure_features")[0].metadata
    assert (metadata["skipped_crossed_books"].value, metadata["skipped_one_sided_books"].value) == (1, 1)
    assert not set(stored(db, "mid").index) & {crossed, one_sided}


def metadata_of(result: dg.ExecuteInProcessResult, node: str) -> dict:
    return result.asset_materializations_for_node(node)[0].metadata


def label_metadata(result: dg.ExecuteInProcessResult) -> dict:
    return metadata_of(result, "triple_barrier_labels")


def label_frame(db) -> pd.DataFrame:
    return stored(db, "mid, label, label_ret, label_t1, label_barrier, labels_computed_at")


def assert_labels_match_one_pass_over_all_data(db) -> None:
    frame = label_frame(db)
    expected = expected_labels(frame["mid"])
    labelled = frame[frame["label"].notna()]
    assert list(labelled.index) == list(expected.index)
    assert (labelled["label"].astype(int) == expected["label"]).all()
    assert (labelled["label_barrier"] == expected["barrier"]).all()
    assert (pd.DatetimeIndex(labelled["label_t1"]) == pd.DatetimeIndex(expected["t1"])).all()
    assert np.allclose(labelled["label_ret"], expected["ret"], rtol=0, atol=0)
    assert frame["labels_computed_at"].notna().all()


def test_labels_near_midnight_wait_for_the_next_day_and_complete_when_it_arrives(
    db, resources, snapshots, dagster_instance
):
    labels = [training.triple_barrier_labels, training.labels_consistent]
    delete_book(db, MIDNIGHT, MIDNIGHT + pd.Timedelta(days=1))  # 2023-04-05 is not recorded yet
    run([training.microstructure_features], resources, dagster_instance, FIRST)
    first = run(labels, resources, dagster_instance, FIRST)
    assert_checks_passed(first, 1)
    pending = label_metadata(first)["pending_next_day"].value
    waiting = label_frame(db)
    # Paths of the last minute of 2023-04-04 run into 2023-04-05, which is not there yet.
    assert pending > 5 and waiting["label"].isna().sum() >= pending
    assert label_metadata(first)["blocked_by_gap"].value == 0

    store_book(db, snapshots[snapshots["exchange_time"] >= MIDNIGHT])  # 2023-04-05 arrives
    run([training.microstructure_features], resources, dagster_instance, SECOND)
    second = run(labels, resources, dagster_instance, SECOND)
    assert_checks_passed(second, 1)
    assert label_metadata(second)["completed_previous_day"].value == pending
    day_one = label_frame(db).loc[: MIDNIGHT - pd.Timedelta(microseconds=1)]
    assert day_one["label_t1"].max() >= MIDNIGHT  # labels completed with the next day's prices
    assert_labels_match_one_pass_over_all_data(db)

    # The capture ends at 00:06:54: a day without data completes nothing and changes nothing.
    assert label_metadata(second)["pending_next_day"].value > 0
    third = run(labels, resources, dagster_instance, "2023-04-06")
    assert label_metadata(third)["completed_previous_day"].value == 0
    assert_labels_match_one_pass_over_all_data(db)


def test_one_run_over_both_days_gives_the_same_labels_and_the_dataset(db, resources, dagster_instance, tmp_path):
    assets = [training.microstructure_features, training.triple_barrier_labels, training.training_dataset,
              *FEATURE_CHECKS, training.labels_consistent]
    config = {"ops": {"training_dataset": {"config": {"output_dir": str(tmp_path)}}}}
    result = run(assets, resources, dagster_instance, days=(FIRST, SECOND), run_config=config)
    assert_checks_passed(result, 4)
    assert_labels_match_one_pass_over_all_data(db)

    dataset = ds.dataset(tmp_path / "training_dataset", format="parquet", partitioning="hive").to_table().to_pandas()
    labelled = label_frame(db).dropna(subset=["label"])
    assert len(dataset) == len(labelled) > 300
    assert sorted(dataset["date"].astype(str).unique()) == [FIRST, SECOND]
    assert {"symbol", "ts", *FEATURE_COLUMNS, "label", "label_ret", "label_t1", "label_barrier"} <= set(dataset.columns)
    assert set(dataset["label"]) <= {-1, 0, 1} and dataset["obi"].between(-1, 1).all()
    metadata = result.asset_materializations_for_node("training_dataset")[0].metadata
    assert metadata["dagster/row_count"].value == len(dataset)

    # Re-running changes no label and rewrites the same files.
    again = run(assets, resources, dagster_instance, days=(FIRST, SECOND), run_config=config)
    features_again = again.asset_materializations_for_node("microstructure_features")[0].metadata
    assert features_again["unchanged"].value == features_again["dagster/row_count"].value > 500
    assert label_metadata(again)["unchanged"].value == label_metadata(again)["dagster/row_count"].value > 500
    reread = ds.dataset(tmp_path / "training_dataset", format="parquet", partitioning="hive").to_table().to_pandas()
    pd.testing.assert_frame_equal(reread, dataset)


def test_labels_net_of_costs_need_a_move_beyond_the_round_trip_and_the_dataset_records_it(
    db, resources, dagster_instance, tmp_path
):
    assets = [training.microstructure_features, training.triple_barrier_labels, training.training_dataset]
    dataset_config = {"training_dataset": {"config": {"output_dir": str(tmp_path)}}}
    gross = run(assets, resources, dagster_instance, days=(FIRST, SECOND), run_config={"ops": dataset_config})
    gross_labels = label_frame(db)
    assert gross_labels["label_barrier"].isin(["upper", "lower"]).sum() > 200
    assert metadata_of(gross, "training_dataset")["cost_model"].value == "labels gross of costs"
    net_config = {"net_of_costs": True, "taker_fee": 0.0005, "spread_share": 0.5}
    net = run(assets, resources, dagster_instance, days=(FIRST, SECOND),
              run_config={"ops": {**dataset_config, "triple_barrier_labels": {"config": net_config}}})
    labels = label_frame(db).dropna(subset=["label"])
    # BTCUSDT's one-minute moves rarely pay 0.1 % plus half the spread: far fewer horizontal labels.
    assert labels["label_barrier"].isin(["upper", "lower"]).sum() < gross_labels["label_barrier"].isin(["upper", "lower"]).sum() / 2
    with db.engine.connect() as conn:
        costs = pd.read_sql_query(text("SELECT label_cost, best_spread FROM training_features t JOIN LATERAL "
                                       "(SELECT (best_ask - best_bid) / ((best_ask + best_bid) / 2) AS best_spread "
                                       "FROM book_snapshots b WHERE b.symbol = t.symbol AND b.exchange_time = t.ts) s "
                                       "ON true WHERE label IS NOT NULL"), conn)
    assert np.allclose(costs["label_cost"], 2 * 0.0005 + 0.5 * costs["best_spread"])
    horizontal = labels[labels["label_barrier"].isin(["upper", "lower"])]
    assert (horizontal["label_ret"].abs() > 0.001).all()  # every horizontal label paid its fees
    assert metadata_of(net, "triple_barrier_labels")["cost_model"].value.startswith("2 x taker fee 0.0500%")
    dataset = ds.dataset(tmp_path / "training_dataset", format="parquet", partitioning="hive").to_table().to_pandas()
    assert dataset["label_cost"].notna().all()
    assert metadata_of(net, "training_dataset")["cost_model"].value.startswith(f"{len(dataset):,} of {len(dataset):,} rows")


def leaky_features(book, config):
    """Planted look-ahead: the 'short return' peeks 3 snapshots into the future."""
    features = compute_features(book, config)
    features["ret_short"] = features["mid"].shift(-3) / features["mid"] - 1
    return features


def test_look_ahead_check_fails_on_a_planted_look_ahead(db, resources, dagster_instance, monkeypatch):
    monkeypatch.setattr(feature_days, "compute_features", leaky_features)
    result = run([training.microstructure_features, training.features_no_look_ahead], resources, dagster_instance,
                 SECOND, raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.metadata["mismatches"].value > 0
    assert "ret_short" in evaluation.metadata["first_mismatches"].value


def test_range_and_null_checks_fail_on_bad_rows(db, resources, dagster_instance):
    # Rows between snapshots: the asset does not rewrite them, so the checks must see them.
    between = [MIDNIGHT + pd.Timedelta(milliseconds=500), MIDNIGHT + pd.Timedelta(milliseconds=1500)]
    bad = [(between[0], 1.5, 1e-5), (between[1], 0.1, None)]
    with db.engine.begin() as conn:
        for ts, obi, spread in bad:
            conn.execute(
                text("INSERT INTO training_features (symbol, ts, mid, microprice, obi, obi_depth, spread_pct, "
                     "hour_sin, hour_cos, dow_sin, dow_cos, features_computed_at) "
                     "VALUES ('BTCUSDT', :ts, 1, 1, :obi, 0, :spread, 0, 1, 0, 1, now())"),
                {"ts": ts, "obi": obi, "spread": spread},
            )
    checks = [training.features_required_not_null, training.features_in_range]
    result = run([training.microstructure_features, *checks], resources, dagster_instance, SECOND, raise_on_error=False)
    verdicts = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not verdicts["features_in_range"].passed
    assert verdicts["features_in_range"].metadata["obi_out_of_range"].value == 1
    assert not verdicts["features_required_not_null"].passed
    assert verdicts["features_required_not_null"].metadata["null_counts"].value == {"spread_pct": 1}


def test_automation_follows_the_data_not_the_clock(code_location, dagster_instance):
    """A day of book snapshots landing requests the features of the days that read it; the labels and
    the dataset follow their own inputs; nothing is requested while nothing new lands."""
    selection = dg.AssetSelection.groups("training_data")

    def tick(cursor=None):
        return dg.evaluate_automation_conditions(defs=code_location, instance=dagster_instance,
                                                 asset_selection=selection, cursor=cursor)

    def requested(result) -> dict[str, set[str]]:
        return {key.to_user_string(): set(subset.expensively_compute_partition_keys())
                for key, subset in ((r.key, r.true_subset) for r in result.results) if not subset.is_empty}

    first = tick()
    assert requested(first) == {}  # nothing landed: nothing runs, old days are not backfilled
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("book_snapshots", partition=FIRST))
    landed = tick(first.cursor)
    assert requested(landed)["microstructure_features"] == {FIRST, SECOND}  # the day, and the next one's warm-up
    assert FIRST in requested(landed)["triple_barrier_labels"]
    quiet = tick(landed.cursor)
    assert requested(quiet) == {}  # handled: not requested again
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("microstructure_features", partition=FIRST))
    features_landed = tick(quiet.cursor)
    # The labels read the features; the dataset reads the labels, so it follows in the same tick.
    assert requested(features_landed) == {"triple_barrier_labels": {FIRST},
                                          "training_dataset": {FIRST, str(dt.date.fromisoformat(FIRST) - DAY)}}


def test_make_run_steps_process_every_day_with_book_snapshots(db, resources, demo_runner, monkeypatch, tmp_path):
    monkeypatch.setenv("WINISWIN_STATE_DIR", str(tmp_path))
    assert day_runs(snapshot_days(db)) == [(dt.date(2023, 4, 4), dt.date(2023, 4, 5))]
    features_lines = steps.features(demo_runner)
    labels_lines = steps.labels(demo_runner)
    dataset_lines = steps.dataset(demo_runner)
    assert features_lines[0].startswith(f"{FIRST}..{SECOND}: ") and features_lines[0].endswith("checks: 3 passed")
    assert "labelled" in labels_lines[0] and labels_lines[0].endswith("checks: 1 passed")
    written = ds.dataset(tmp_path / "datasets" / "training_dataset", format="parquet", partitioning="hive").count_rows()
    assert f"{written:,} rows" in dataset_lines[0] and written == label_frame(db)["label"].notna().sum()


def test_a_day_without_book_snapshots_writes_nothing(db, resources, dagster_instance, tmp_path):
    assets = [training.microstructure_features, training.triple_barrier_labels, training.training_dataset,
              *FEATURE_CHECKS, training.labels_consistent]
    config = {"ops": {"training_dataset": {"config": {"output_dir": str(tmp_path)}}}}
    result = run(assets, resources, dagster_instance, "2023-04-03", run_config=config)
    assert_checks_passed(result, 4)
    assert result.asset_materializations_for_node("microstructure_features")[0].metadata["dagster/row_count"].value == 0
    assert result.asset_materializations_for_node("training_dataset")[0].metadata["dagster/row_count"].value == 0
    assert not (tmp_path / "training_dataset" / "date=2023-04-03").exists()


def test_look_ahead_check_skips_days_whose_book_is_gone(db, resources, dagster_instance):
    run([training.microstructure_features], resources, dagster_instance, SECOND)
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM book_snapshots WHERE exchange_time >= :day"), {"day": MIDNIGHT})
    result = run([training.microstructure_features, training.features_no_look_ahead], resources, dagster_instance,
                 SECOND)
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["rows_checked"].value == 0
    assert evaluation.metadata["not_checked_book_missing"].value == f"BTCUSDT {SECOND}"
    assert len(stored(db, "mid")) > 400  # the features stay


def test_labels_do_not_jump_a_gap_in_the_data(db, resources, snapshots, dagster_instance):
    run([training.microstructure_features], resources, dagster_instance, days=(FIRST, SECOND))
    tail = snapshots[snapshots["exchange_time"] >= snapshots["exchange_time"].max() - pd.Timedelta(minutes=2)]
    later = tail.assign(exchange_time=tail["exchange_time"] + pd.Timedelta(days=400))
    store_book(db, later)  # the same symbol's book resumes 400 days later
    labels = [training.triple_barrier_labels, training.labels_consistent]
    result = run(labels, resources, dagster_instance, days=(FIRST, SECOND))
    assert_checks_passed(result, 1)
    frame = label_frame(db).loc[:MIDNIGHT + pd.Timedelta(days=1)]
    labelled = frame.dropna(subset=["label"])
    assert (pd.DatetimeIndex(labelled["label_t1"]) - labelled.index <= LABELS.horizon + LABELS.gap_tolerance).all()
    # The paths of the capture's last minute run into the gap: no label, for good ('gap'), not pending.
    blocked = frame[frame["label_barrier"] == "gap"]
    assert len(blocked) > 30 and blocked.index.min() >= snapshots["exchange_time"].max() - LABELS.horizon
    assert blocked[["label", "label_ret", "label_t1"]].isna().all().all()
    metadata = label_metadata(result)
    assert metadata["blocked_by_gap"].value == len(blocked) and metadata["pending_next_day"].value == 0
    assert "none (gap)" in metadata["label_distribution"].value
    (check,) = result.get_asset_check_evaluations()
    assert check.metadata["blocked_by_gap"].value == len(blocked)
    # The check's "pending" (no label, no barrier) are only the rows without a volatility target.
    assert check.metadata["pending"].value == metadata["skipped_without_vol_target"].value > 0
    # The others are labelled as in one pass over the capture alone.
    expected = expected_labels(frame["mid"])
    assert list(labelled.index) == list(expected.index)


def test_labels_do_not_depend_on_which_features_exist(db, resources, dagster_instance):
    labels = [training.triple_barrier_labels]
    # 2023-04-05 first, without the features of the day before (its volatility warm-up): then 04-04.
    run(labels, resources, dagster_instance, SECOND)
    run(labels, resources, dagster_instance, FIRST)
    out_of_order = label_frame(db).drop(columns=["mid", "labels_computed_at"])
    assert out_of_order["label"].notna().sum() > 400
    run([training.microstructure_features, *labels], resources, dagster_instance, days=(FIRST, SECOND))
    in_order = label_frame(db)
    pd.testing.assert_frame_equal(out_of_order, in_order.drop(columns=["mid", "labels_computed_at"]))
    assert_labels_match_one_pass_over_all_data(db)


def test_a_gap_across_midnight_is_reported_and_blanks_the_windows_after_it(db, resources, snapshots, dagster_instance):
    # Nothing from 23:59:40 to 00:00:30: 50 s, longer than every window.
    start, end = MIDNIGHT - pd.Timedelta(seconds=20), MIDNIGHT + pd.Timedelta(seconds=30)
    delete_book(db, start + pd.Timedelta(milliseconds=1), end)
    result = run([training.microstructure_features, *FEATURE_CHECKS], resources, dagster_instance, SECOND)
    assert_checks_passed(result, 3)
    metadata = result.asset_materializations_for_node("microstructure_features")[0].metadata
    assert metadata["gaps"].value == 1 and metadata["gap_tolerance"].value == "0 days 00:00:01"
    assert "BTCUSDT 2023-04-04 23:59:40 -> 2023-04-05 00:00:30 (0 days 00:00:50)" in metadata["gap_spans"].value
    assert metadata["longest_gap"].value == "0 days 00:00:50"
    got = stored(db, ", ".join(FEATURE_COLUMNS))
    assert got.index.min() == end
    seconds_on = (got.index - end).total_seconds()
    for column, window in (("ofi", 10), ("ret_short", 10), ("realized_vol", 60)):
        assert got[column].isna().tolist() == list(seconds_on < window), column
    # The same as one pass over the whole book, the gap included.
    book = snapshots[(snapshots["exchange_time"] <= start) | (snapshots["exchange_time"] >= end)]
    expected = expected_features(book).loc[MIDNIGHT:, list(FEATURE_COLUMNS)]
    pd.testing.assert_frame_equal(got, expected, check_index_type=False, check_names=False, rtol=1e-12)
    # The gap belongs to the day it ends on: 2023-04-04 reports none.
    first = run([training.microstructure_features], resources, dagster_instance, FIRST)
    assert first.asset_materializations_for_node("microstructure_features")[0].metadata["gaps"].value == 0


def test_features_and_labels_see_the_same_gaps():
    # One grid step of the book (the market-data import's 1 s cadence) for both.
    assert FEATURES.gap_tolerance == LABELS.gap_tolerance == pd.Timedelta(seconds=1)
    # A day's features read what their windows may reach, no more: the longest window and the tolerance.
    assert feature_days.FEATURE_READ_WARMUP == FEATURES.vol_window + FEATURES.gap_tolerance


def test_an_archived_day_recomputed_and_archived_again_keeps_every_row_and_column(
    db, database_url, resources, dagster_instance, postgres_dagster_home
):
    """Archive both days (book snapshots and training features), re-materialize the second one with
    the `dagster asset materialize` CLI: it is computed from the rows it had, read in place (its
    warm-up from the archived day before), and the history reader returns what it returned before
    archival, in every column, labels and computation times included; archiving again keeps it so."""
    days = [dt.date.fromisoformat(FIRST), dt.date.fromisoformat(SECOND)]
    run([training.microstructure_features, training.triple_barrier_labels], resources, dagster_instance,
         days=(FIRST, SECOND))
    cold = resources["cold_storage"].store()

    def history() -> pd.DataFrame:
        return read_history("training_features", days[1], days[1] + DAY, manager=db, store=cold)

    before = history()
    assert before["label"].notna().sum() > 300 and before["ofi"].notna().all()
    as_of = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    archive_old_data(30, manager=db, store=cold, as_of=as_of, tables=["book_snapshots", "training_features"])
    assert stored(db, "mid").empty  # nothing hot any more
    pd.testing.assert_frame_equal(history(), before)
    env = {**os.environ, "COLD_STORAGE_DIR": resources["cold_storage"].local_dir}
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "winiswin_pipelines.definitions",
         "--select", "microstructure_features,triple_barrier_labels", "--partition", SECOND,
         "--config-json", '{"execution": {"config": {"in_process": {}}}}'],  # one process: a faster test
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"features {SECOND}: UpsertResult(staged={len(before)}, inserted=0, updated=0, unchanged={len(before)}" \
        in completed.stderr
    pd.testing.assert_frame_equal(history(), before)
    with db.engine.connect() as conn:  # read in place: nothing was restored, nothing rewritten
        assert conn.execute(text("SELECT count(*) FROM book_snapshots")).scalar_one() == 0
    assert stored(db, "mid").empty
    archive_old_data(30, manager=db, store=cold, as_of=as_of, tables=["book_snapshots", "training_features"])
    pd.testing.assert_frame_equal(history(), before)
    assert stored(db, "mid").empty
