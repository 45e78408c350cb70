"""Archival in Dagster (assets, check, schedule, restore job, storage pruning) and the restore CLI."""

import datetime as dt
import os
import runpy
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from winiswin_pipelines.archive.tables import ARCHIVED_TABLES
from winiswin_pipelines.coldstore import LocalColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.defs.archive import (
    TABLE_READERS,
    archive_every_24_hours,
    archive_key,
    cold_archive,
    manifest_checks,
    restore_archive_job,
)
from winiswin_pipelines.defs.dagster_storage import prune_instance_storage
from winiswin_pipelines.defs.partitions import range_tags
from winiswin_pipelines.resources import ColdStorageResource, PostgresResource
from winiswin_pipelines.settings import PROJECT_DIR
from winiswin_pipelines_tests.test_archive import AS_OF, OLD_DAYS, RECENT_DAY, all_rows, seed, table_rows

# These tests are about the archival itself: no reader has materialized anything, so they force it.
RUN_CONFIG = {"ops": {"cold_archive": {"config": {"as_of": AS_OF.isoformat(), "force": True}}}}


@pytest.fixture
def resources(database_url: str, tmp_path: Path) -> dict:
    return {"postgres": PostgresResource(database_url=database_url),
            "cold_storage": ColdStorageResource(local_dir=str(tmp_path / "cold"))}


def _materialize(resources: dict, instance: dg.DagsterInstance, run_config: dict = RUN_CONFIG,
                 **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize([cold_archive, *manifest_checks], resources=resources, instance=instance,
                          run_config=run_config, **kwargs)


def _config(**config) -> dict:
    return {"ops": {"cold_archive": {"config": {"as_of": AS_OF.isoformat(), **config}}}}


def _materialized_by_readers(instance: dg.DagsterInstance, *days: dt.date) -> None:
    """What the readers' runs would record: their materializations of `days`."""
    for reader in sorted({name for names in TABLE_READERS.values() for name in names}):
        for day in days:
            instance.report_runless_asset_event(dg.AssetMaterialization(reader, partition=day.isoformat()))


def test_a_day_partition_archives_every_table_with_metadata_and_a_passing_check(
    db: DatabaseManager, resources: dict, dagster_instance: dg.DagsterInstance
) -> None:
    seed(db, OLD_DAYS)
    result = _materialize(resources, dagster_instance, partition_key=OLD_DAYS[0].isoformat())
    assert result.success
    events = {e.asset_key: e.materialization for e in result.get_asset_materialization_events()}
    assert set(events) == {archive_key(table) for table in ARCHIVED_TABLES}
    book = {key: value.value for key, value in events[archive_key("book_snapshots")].metadata.items()}
    assert book["status"] == "archived" and book["dagster/row_count"] == 6 and book["bytes"] > 0
    assert book["compression_ratio"] > 0 and len(book["checksum_sha256"]) == 64 and book["duration_s"] > 0
    assert "table=book_snapshots/date=2024-03-01" in book["uri"] and book["removed_from_postgres_by"] == "drop partition"
    assert book["table_bytes_on_disk_after"] < book["table_bytes_on_disk_before"]
    assert events[archive_key("trades")].metadata["table_bytes_on_disk_before"].value > 0  # unpartitioned too
    checks = result.get_asset_check_evaluations()
    assert len(checks) == len(ARCHIVED_TABLES) and all(check.passed for check in checks)
    assert {row[1].date() for row in table_rows(db, "book_snapshots")} == {OLD_DAYS[1]}

    # A missing object makes the check fail on the next materialization of that day.
    store = LocalColdStore(Path(resources["cold_storage"].local_dir))
    store.delete(store.list_keys("table=klines/")[0])
    again = _materialize(resources, dagster_instance, partition_key=OLD_DAYS[0].isoformat(), raise_on_error=False)
    failed = [c for c in again.get_asset_check_evaluations() if not c.passed]
    assert [c.asset_key for c in failed] == [archive_key("klines")]
    assert "missing" in failed[0].metadata["problems"].value


def test_a_day_inside_the_retention_is_not_materialized_and_stays_hot(
    db: DatabaseManager, resources: dict, dagster_instance: dg.DagsterInstance
) -> None:
    seed(db, [RECENT_DAY])
    before = all_rows(db)
    result = _materialize(resources, dagster_instance, partition_key=RECENT_DAY.isoformat())
    assert result.success and result.get_asset_materialization_events() == []
    assert all_rows(db) == before


def test_a_partition_range_archives_in_one_run_with_per_day_observations(
    db: DatabaseManager, resources: dict, dagster_instance: dg.DagsterInstance
) -> None:
    seed(db, OLD_DAYS)
    tags = range_tags(OLD_DAYS[0], OLD_DAYS[1])
    result = _materialize(resources, dagster_instance, tags=tags)
    assert result.success
    klines = next(e.materialization for e in result.get_asset_materialization_events()
                  if e.asset_key == archive_key("klines"))
    assert klines.metadata["days_archived"].value == 2 and klines.metadata["dagster/row_count"].value == 12
    observations = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert len(observations) == 2 * len(ARCHIVED_TABLES)
    assert table_rows(db, "klines") == []


def test_the_schedule_requests_every_eligible_day_not_yet_archived(
    db: DatabaseManager, resources: dict, dagster_instance: dg.DagsterInstance
) -> None:
    seed(db, OLD_DAYS + [RECENT_DAY])

    def evaluate():
        with dg.build_schedule_context(scheduled_execution_time=AS_OF, instance=dagster_instance,
                                       resources={"postgres": resources["postgres"]}) as context:
            return archive_every_24_hours(context)

    def requested() -> list[str]:
        return [request.partition_key for request in evaluate()]

    assert requested() == [day.isoformat() for day in OLD_DAYS]  # trades and decisions have no readers
    _materialize(resources, dagster_instance, partition_key=OLD_DAYS[0].isoformat())  # one day done meanwhile
    assert requested() == ["2024-03-02"]
    _materialize(resources, dagster_instance, partition_key=OLD_DAYS[1].isoformat())
    assert isinstance(evaluate(), dg.SkipReason)


def test_a_day_leaves_only_once_its_readers_have_used_it_unless_forced(
    db: DatabaseManager, resources: dict, dagster_instance: dg.DagsterInstance
) -> None:
    seed(db, OLD_DAYS[:1])
    day = OLD_DAYS[0].isoformat()
    result = _materialize(resources, dagster_instance, _config(), partition_key=day)
    archived = {e.asset_key for e in result.get_asset_materialization_events()}
    assert archived == {archive_key(t) for t in ("trading_decisions", "trades", "trade_partial_exits")}
    waiting = {e.asset_key.path[-1]: e.event_specific_data.asset_observation.metadata
               for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"}
    assert set(waiting) == set(TABLE_READERS)
    assert "microstructure_features 2024-03-01, 2024-03-02" in waiting["book_snapshots"]["waiting_for"].value
    assert len(table_rows(db, "book_snapshots")) == 6  # still hot
    _materialized_by_readers(dagster_instance, OLD_DAYS[0])  # the next day is still missing
    still = _materialize(resources, dagster_instance, _config(), partition_key=day)
    assert {e.asset_key.path[-1] for e in still.get_asset_materialization_events()}.isdisjoint(TABLE_READERS)
    _materialized_by_readers(dagster_instance, OLD_DAYS[0] + dt.timedelta(days=1))
    ready = _materialize(resources, dagster_instance, _config(), partition_key=day)
    assert {e.asset_key for e in ready.get_asset_materialization_events()} == {archive_key(t) for t in ARCHIVED_TABLES}
    assert table_rows(db, "book_snapshots") == []
    tiers = {e.asset_key.path[-1]: e.materialization.metadata for e in ready.get_asset_materialization_events()}
    assert tiers["klines"]["cold_days"].value == "1 (2024-03-01 .. 2024-03-01)" and tiers["klines"]["hot_days"].value == "0"


def test_retention_per_table_from_the_run_config(
    db: DatabaseManager, resources: dict, dagster_instance: dg.DagsterInstance
) -> None:
    seed(db, OLD_DAYS[:1])  # 45 days before AS_OF
    config = _config(force=True, days_to_keep=30, days_to_keep_by_table={"klines": 60})
    result = _materialize(resources, dagster_instance, config, partition_key=OLD_DAYS[0].isoformat())
    archived = {e.asset_key for e in result.get_asset_materialization_events()}
    assert archive_key("book_snapshots") in archived and archive_key("klines") not in archived
    assert len(table_rows(db, "klines")) == 6 and table_rows(db, "book_snapshots") == []


def test_the_readers_of_each_table_are_the_assets_downstream_of_its_writers(code_location: dg.Definitions) -> None:
    graph = code_location.resolve_asset_graph()
    writers = {"klines": ["klines"], "book_snapshots": ["book_snapshots"],
               "training_features": ["microstructure_features", "triple_barrier_labels"]}
    for table, names in writers.items():
        children = {child.to_user_string() for name in names for child in graph.get(dg.AssetKey(name)).child_keys
                    if child.path[0] != "archive"}
        assert children == set(TABLE_READERS[table]), table


def test_restore_job_and_cli_bring_archived_days_back_idempotently(
    db: DatabaseManager, database_url: str, resources: dict, dagster_instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
) -> None:
    seed(db, OLD_DAYS)
    before = all_rows(db)
    tags = range_tags(OLD_DAYS[0], OLD_DAYS[1])
    assert _materialize(resources, dagster_instance, tags=tags).success
    run_config = {"ops": {"restore_archived_days": {"config": {
        "table": "book_snapshots", "first_day": OLD_DAYS[0].isoformat(), "last_day": OLD_DAYS[1].isoformat()}}}}
    job = restore_archive_job.execute_in_process(run_config=run_config, resources=resources, instance=dagster_instance)
    assert job.output_for_node("restore_archived_days") == 12
    assert repr(table_rows(db, "book_snapshots")) == before["book_snapshots"]

    env = {**os.environ, "DATABASE_URL": database_url, "COLD_STORAGE_DIR": resources["cold_storage"].local_dir}
    env.pop("BUCKET_NAME", None)
    args = ["--table", "all", "--start", OLD_DAYS[0].isoformat(), "--end", OLD_DAYS[1].isoformat()]
    first = subprocess.run([sys.executable, str(PROJECT_DIR / "scripts" / "restore_archive.py"), *args],
                           env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert all_rows(db) == before

    # Again, in process: nothing left to restore.
    for name in ("DATABASE_URL", "COLD_STORAGE_DIR"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("BUCKET_NAME", raising=False)
    cli = runpy.run_path(str(PROJECT_DIR / "scripts" / "restore_archive.py"))
    assert cli["main"](args) == 0
    assert "restored 0 rows over 12 archived table-days" in capsys.readouterr().out
    assert cli["main"](["--table", "nope", "--start", "2024-03-01"]) == 2
    assert "not archived" in capsys.readouterr().err
    assert all_rows(db) == before


def test_pruning_deletes_old_runs_and_trims_the_event_log_of_asset_runs(postgres_dagster_home: Path) -> None:

    @dg.asset
    def probe(context: dg.AssetExecutionContext) -> None:
        context.log.info("a log line that pruning removes")

    @dg.op
    def noop() -> None:
        pass

    @dg.job
    def plain() -> None:
        noop()

    with dg.DagsterInstance.get() as instance:
        assert instance.event_log_storage.__class__.__name__ == "PostgresEventLogStorage"
        asset_run = dg.materialize([probe], instance=instance).run_id
        plain_run = plain.execute_in_process(instance=instance).run_id
        logged = len(instance.all_logs(asset_run))
        untouched = prune_instance_storage(instance, dt.timedelta(days=30))
        assert instance.get_run_by_id(plain_run) and len(instance.all_logs(asset_run)) == logged
        assert (untouched.runs_deleted, untouched.runs_trimmed) == (0, 0)

        result = prune_instance_storage(instance, dt.timedelta(days=30), now=dt.datetime.now(dt.UTC) + dt.timedelta(days=31))
        assert instance.get_run_by_id(plain_run) is None
        kept = instance.all_logs(asset_run)
        assert instance.get_run_by_id(asset_run) is not None and result.events_trimmed > 0
        kinds = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS}
        assert {e.dagster_event.event_type_value for e in kept if e.dagster_event} == {kind.value for kind in kinds}
        assert not [e for e in kept if e.dagster_event is None]
        assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None
