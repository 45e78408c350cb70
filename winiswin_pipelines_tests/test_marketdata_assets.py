"""The market-data import assets against a real PostgreSQL: partitions, idempotency, checks."""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
from sqlalchemy import text

from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.defs.marketdata import (
    book_snapshots,
    book_snapshots_not_crossed,
    klines,
    klines_ohlc_consistent,
)
from winiswin_pipelines.defs.partitions import range_tags
from winiswin_pipelines.demo.steps import market_data
from winiswin_pipelines.marketdata import samples
from winiswin_pipelines.marketdata.capture import read_capture
from winiswin_pipelines.marketdata.orderbook import rebuild_book_snapshots
from winiswin_pipelines.resources import PostgresResource

UTC = dt.UTC


def _run(instance, database_url: str, assets: list, *, partition: str | None = None,
         days: tuple[str, str] | None = None, config: dict | None = None) -> dg.ExecuteInProcessResult:
    tags = range_tags(*days) if days else None
    run_config = None
    if config:
        names = [a.key.to_user_string() for a in assets if isinstance(a, dg.AssetsDefinition)]
        run_config = {"ops": {name: {"config": config} for name in names}}
    return dg.materialize(
        assets, instance=instance, resources={"postgres": PostgresResource(database_url=database_url)},
        partition_key=partition, tags=tags, run_config=run_config,
    )


def _table(db: DatabaseManager, table: str, order: str) -> pd.DataFrame:
    with db.engine.connect() as conn:
        return pd.read_sql(text(f"SELECT * FROM {table} ORDER BY {order}"), conn)


def _materialization(result: dg.ExecuteInProcessResult, name: str) -> dict:
    return {key: value.value for key, value in result.asset_materializations_for_node(name)[0].metadata.items()}


def test_klines_day_partition_is_idempotent_and_holds_only_its_day(
    db: DatabaseManager, database_url: str, dagster_instance: dg.DagsterInstance
) -> None:
    first = _run(dagster_instance, database_url, [klines, klines_ohlc_consistent], partition="2023-04-05")
    assert first.success
    assert all(check.passed for check in first.get_asset_check_evaluations())
    stored = _table(db, "klines", "symbol, interval, open_time")
    day = pd.Timestamp("2023-04-05", tz="UTC")
    assert stored["open_time"].between(day, day + pd.Timedelta(hours=23, minutes=59)).all()
    five_minute = stored[stored["interval"] == "5m"]
    assert len(five_minute) == 288 and (five_minute["source"] == "csv:binance_um_BTCUSDT-5m-2023-04.csv").all()
    # 1m bars from the capture: only the minutes it recorded from start to end (00:00 .. 00:05).
    one_minute = stored[stored["interval"] == "1m"]
    assert one_minute["open_time"].tolist() == [day + pd.Timedelta(minutes=m) for m in range(6)]
    # The 00:00-00:04 1m bars rebuilt from trades add up to Binance's official 5m bar.
    official = five_minute[five_minute["open_time"] == day].iloc[0]
    assert one_minute["trade_count"][:5].sum() == official["trade_count"] == 8056
    assert round(one_minute["volume"][:5].sum(), 3) == official["volume"]
    assert _materialization(first, "klines")["inserted"] == 294

    again = _run(dagster_instance, database_url, [klines], partition="2023-04-05")
    metadata = _materialization(again, "klines")
    assert (metadata["inserted"], metadata["updated"], metadata["unchanged"]) == (0, 0, 294)
    pd.testing.assert_frame_equal(_table(db, "klines", "symbol, interval, open_time"), stored)


def test_klines_range_backfill_runs_once_and_skips_the_missing_day(
    db: DatabaseManager, database_url: str, dagster_instance: dg.DagsterInstance
) -> None:
    result = _run(dagster_instance, database_url, [klines, klines_ohlc_consistent], days=("2023-04-06", "2023-04-08"))
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    with db.engine.connect() as conn:
        per_day = dict(conn.execute(text(
            "SELECT (open_time AT TIME ZONE 'UTC')::date, count(*) FROM klines GROUP BY 1 ORDER BY 1"
        )).all())
    # 2023-04-07 is missing from the sample file itself.
    assert per_day == {dt.date(2023, 4, 6): 288, dt.date(2023, 4, 8): 288}


def test_book_snapshots_day_partition_continues_the_previous_days_book(
    db: DatabaseManager, database_url: str, dagster_instance: dg.DagsterInstance
) -> None:
    result = _run(dagster_instance, database_url, [book_snapshots, book_snapshots_not_crossed], partition="2023-04-05")
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    stored = _table(db, "book_snapshots", "symbol, exchange_time")
    day = pd.Timestamp("2023-04-05", tz="UTC")
    # The REST snapshot is in the 2023-04-04 file: the day starts with a valid book at 00:00:00.
    assert stored["exchange_time"].iloc[0] == day
    assert stored["exchange_time"].iloc[-1] < day + pd.Timedelta(days=1)
    assert stored["receive_time"].iloc[0] < day  # the last diff applied before midnight
    expected = rebuild_book_snapshots(
        itertools.chain(read_capture(samples.CAPTURE_BTCUSDT_20230404), read_capture(samples.CAPTURE_BTCUSDT_20230405)),
        symbol="BTCUSDT", cadence=dt.timedelta(seconds=1), depth=10,
    )
    expected = expected[expected["exchange_time"] >= day]
    assert stored["last_update_id"].tolist() == expected["last_update_id"].tolist()
    assert stored["bid_sizes"].tolist() == expected["bid_sizes"].tolist()
    assert (stored["best_bid"] < stored["best_ask"]).all()
    assert stored["bid_prices"].map(len).eq(10).all() and stored["ask_sizes"].map(len).eq(10).all()
    metadata = _materialization(result, "book_snapshots")
    assert (metadata["dagster/row_count"], metadata["gaps_detected"], metadata["invalid_book_periods"]) == (len(expected), 0, 0)

    rerun = _run(dagster_instance, database_url, [book_snapshots], partition="2023-04-05")
    again = _materialization(rerun, "book_snapshots")
    assert (again["inserted"], again["updated"], again["unchanged"]) == (0, 0, len(expected))
    pd.testing.assert_frame_equal(_table(db, "book_snapshots", "symbol, exchange_time"), stored)


def test_book_snapshots_range_over_two_symbols_with_a_cadence(
    db: DatabaseManager, database_url: str, dagster_instance: dg.DagsterInstance
) -> None:
    result = _run(dagster_instance, database_url, [book_snapshots], days=("2024-07-18", "2024-07-19"),
                  config={"book_cadence_ms": 5000, "book_depth": 3})
    metadata = _materialization(result, "book_snapshots")
    assert metadata["symbols"] == "BTCUSDT, ETHUSDT" and metadata["gaps_detected"] == 0
    with db.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT symbol, (exchange_time AT TIME ZONE 'UTC')::date, count(*), "
            "bool_and(extract(epoch FROM exchange_time)::numeric % 5 = 0), bool_and(cardinality(bid_prices) = 3) "
            "FROM book_snapshots GROUP BY 1, 2 ORDER BY 1, 2"
        )).all()
    assert [(r[0], r[1]) for r in rows] == [
        ("BTCUSDT", dt.date(2024, 7, 18)), ("BTCUSDT", dt.date(2024, 7, 19)),
        ("ETHUSDT", dt.date(2024, 7, 18)), ("ETHUSDT", dt.date(2024, 7, 19)),
    ]
    assert all(r[3] and r[4] for r in rows) and sum(r[2] for r in rows) == metadata["dagster/row_count"]


def test_a_gap_in_a_capture_shows_in_the_metadata(
    tmp_path: Path, database_url: str, dagster_instance: dg.DagsterInstance
) -> None:
    source = tmp_path / "market"
    source.mkdir()
    shutil.copy(samples.CAPTURE_BTCUSDT_20230404, source)
    with gzip.open(samples.CAPTURE_BTCUSDT_20230405, "rb") as handle:
        lines = handle.readlines()
    depth_lines = [i for i, line in enumerate(lines) if b"@depth" in line[:60]]
    del lines[depth_lines[5000]]  # a lost diff: the book stays invalid, no snapshot follows
    lines[-1] = lines[-1][:30]  # and a recorder that died mid-line
    (source / samples.CAPTURE_BTCUSDT_20230405.name).write_bytes(gzip.compress(b"".join(lines)))
    result = _run(dagster_instance, database_url, [book_snapshots], partition="2023-04-05",
                  config={"source_dir": str(source)})
    metadata = _materialization(result, "book_snapshots")
    assert (metadata["gaps_detected"], metadata["invalid_book_periods"]) == (1, 1)
    assert "| BTCUSDT |" in metadata["invalid_periods"] and "end of data" in metadata["invalid_periods"]
    assert 60 < metadata["dagster/row_count"] < 300  # valid until the lost diff, a few minutes into the day
    assert metadata["rejected_lines"] == 1 and f":{len(lines)}: not '<timestamp> <json>'" in metadata["rejected_examples"]


def test_crossed_book_check_fails_on_a_planted_crossed_row(
    db: DatabaseManager, database_url: str, dagster_instance: dg.DagsterInstance
) -> None:
    _run(dagster_instance, database_url, [book_snapshots], partition="2023-04-05")
    with db.engine.begin() as conn:  # a row no capture holds: the import keeps it
        conn.execute(text(
            "INSERT INTO book_snapshots (symbol, exchange_time, last_update_id, best_bid, best_ask) "
            "VALUES ('BTCUSDT', '2023-04-05 12:00:00+00', 1, 28001.0, 28000.0)"
        ))
    result = dg.materialize(
        [book_snapshots, book_snapshots_not_crossed], instance=dagster_instance, partition_key="2023-04-05",
        resources={"postgres": PostgresResource(database_url=database_url)}, raise_on_error=False,
    )
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["crossed_or_locked"].value == 1


def test_make_run_step_imports_every_bundled_sample_day(db: DatabaseManager, demo_runner) -> None:
    lines = market_data(demo_runner)
    assert len(lines) == 4 and all(" passed;" in line and "FAILED" not in line for line in lines)
    with db.engine.connect() as conn:
        klines_days = conn.execute(text(
            "SELECT count(DISTINCT (open_time AT TIME ZONE 'UTC')::date) FROM klines WHERE interval = '5m'"
        )).scalar_one()
        book_days = conn.execute(text(
            "SELECT array_agg(DISTINCT symbol || ' ' || (exchange_time AT TIME ZONE 'UTC')::date) FROM book_snapshots"
        )).scalar_one()
    assert klines_days == 29  # April 2023 without the 7th, which the sample lacks
    assert sorted(book_days) == [
        "BTCUSDT 2023-04-04", "BTCUSDT 2023-04-05", "BTCUSDT 2024-07-18", "BTCUSDT 2024-07-19",
        "ETHUSDT 2024-07-18", "ETHUSDT 2024-07-19",
    ]


def test_daily_schedule_imports_the_day_that_just_ended(code_location: dg.Definitions) -> None:
    definitions = code_location
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2024, 7, 20, 0, 20, tzinfo=UTC),
        repository_def=definitions.get_repository_def(),
    )
    schedule = definitions.resolve_schedule_def("market_data_daily")
    [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2024-07-19" and schedule.job_name == "market_data_import"
