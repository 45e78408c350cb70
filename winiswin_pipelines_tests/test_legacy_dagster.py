"""The legacy migration as Dagster assets, the `dagster asset materialize` CLI, scripts/migrate_system.py, `make run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import text

from winiswin_pipelines import settings
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.defs import legacy as legacy_defs
from winiswin_pipelines.defs.legacy import legacy_accounting, legacy_store_discovery, legacy_trades
from winiswin_pipelines.defs.partitions import legacy_store_partitions, range_tags, register_legacy_stores
from winiswin_pipelines.demo.steps import legacy_migration
from winiswin_pipelines.legacy.sniff import sniff_file
from winiswin_pipelines.resources import ColdStorageResource, LegacyFolderResource, PostgresResource
from winiswin_pipelines_tests.legacy_fixtures import write_legacy_folder

PROJECT = settings.PROJECT_DIR


@pytest.fixture
def legacy(tmp_path: Path):
    root = tmp_path / "legacy"
    return root, write_legacy_folder(root)


def all_partitions(instance: dg.DagsterInstance) -> dict[str, str]:
    keys = instance.get_dynamic_partitions(legacy_store_partitions.name)
    return range_tags(keys[0], keys[-1])


def resources(database_url: str, root: Path) -> dict:
    return {"postgres": PostgresResource(database_url=database_url), "legacy_folder": LegacyFolderResource(legacy_dir=str(root)),
            "cold_storage": ColdStorageResource(local_dir=str(root.parent / "cold"))}


def discover(instance: dg.DagsterInstance, root: Path, cursor: str | None = None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"legacy_folder": LegacyFolderResource(legacy_dir=str(root))}) as context:
        result = legacy_store_discovery(context)
    for request in getattr(result, "dynamic_partitions_requests", []):  # what the daemon does with the tick's result
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_discovery_sensor_adds_one_partition_per_store_and_sniffs_only_new_files(legacy, dagster_instance, monkeypatch):
    root, expected = legacy
    sniffed = []
    monkeypatch.setattr(legacy_defs, "sniff_file", lambda root, path: sniffed.append(path) or sniff_file(root, path))
    first = discover(dagster_instance, root)
    assert set(dagster_instance.get_dynamic_partitions("legacy_stores")) == set(expected.stores)
    files = len(sniffed)
    again = discover(dagster_instance, root, first.cursor)
    assert again.dynamic_partitions_requests == [] and len(sniffed) == files  # nothing read again
    (root / "data" / "new_trades.jsonl").write_bytes((root / "data" / "trades.jsonl").read_bytes())
    added = discover(dagster_instance, root, again.cursor)
    assert [list(r.partition_keys) for r in added.dynamic_partitions_requests] == [["data/new_trades.jsonl"]]
    assert sniffed[files:] == [root.resolve() / "data" / "new_trades.jsonl"]


def test_sensor_skips_with_the_reason_when_the_folder_is_missing(tmp_path, dagster_instance):
    result = discover(dagster_instance, tmp_path / "nowhere")
    assert isinstance(result, dg.SkipReason) and "legacy folder not found" in result.skip_message


def count(db: DatabaseManager, table: str) -> int:
    with db.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_assets_migrate_every_partition_and_the_check_proves_it(db, database_url, legacy, dagster_instance):
    root, expected = legacy
    register_legacy_stores(dagster_instance, expected.stores)
    result = dg.materialize([legacy_trades, legacy_accounting], instance=dagster_instance,
                            resources=resources(database_url, root), tags=all_partitions(dagster_instance))
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["records_missing_in_postgres"].value == 0
    metadata = result.asset_materializations_for_node("legacy_trades")[0].metadata
    read = sum(store["read"] for store in expected.stores.values())
    assert metadata["records_read"].value == read and metadata["balanced"].value is True
    assert metadata["records_quarantined"].value == len(expected.quarantine_reasons)
    settled = metadata["records_duplicates"].value + metadata["records_quarantined"].value
    assert metadata["dagster/row_count"].value == read - settled
    assert "| `data/trades.jsonl` | jsonl | 16 |" in metadata["per_source"].value
    assert "| `data/trades.jsonl` | B' | 1 | 1 | 0 |" in metadata["per_variant"].value
    cold = metadata["cold_copies"].value["data/trades.jsonl"]  # each source linked to its cold copy
    assert cold["cold_uri"] == f"file://{root.parent / 'cold' / 'legacy' / cold['sha256']}.zst"
    assert f"]({cold['cold_uri']}) |" in metadata["per_source"].value
    # no real trade of the fixture's two partial exits was held at their time: unlinked, with the reason
    assert (metadata["partial_exits_linked"].value, metadata["partial_exits_unlinked"].value) == (0, 2)
    assert "no real ETHUSDT LONG trade was held at 2025-11-02 10:00:00 UTC" in metadata["partial_exits_unlinked_why"].value
    assert count(db, "legacy_quarantine") == len(expected.quarantine_reasons)


def test_blocking_check_fails_when_a_row_is_missing(db, database_url, legacy, dagster_instance):
    root, expected = legacy
    register_legacy_stores(dagster_instance, expected.stores)
    assets = [legacy_trades, legacy_accounting]
    first = dg.materialize(assets, instance=dagster_instance, resources=resources(database_url, root),
                           partition_key="data/trades.json")
    assert first.get_asset_check_evaluations()[0].passed
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM trades WHERE trade_uid = 'legacy:ETHUSDT_1761400000.100000'"))
    rerun_check = dg.materialize(  # the check alone, on the same partition
        assets, instance=dagster_instance, resources=resources(database_url, root),
        tags={"dagster/partition": "data/trades.json"}, selection=dg.AssetSelection.checks(legacy_accounting),
        raise_on_error=False,
    )
    (evaluation,) = rerun_check.get_asset_check_evaluations()
    assert not evaluation.passed
    assert "legacy:ETHUSDT_1761400000.100000" in evaluation.metadata["missing_examples"].value


def test_dagster_cli_materializes_a_discovered_partition(db, database_url, legacy, tmp_path, postgres_dagster_home):
    root, _ = legacy
    env = {**os.environ, "WINISWIN_LEGACY_DIR": str(root), "WINISWIN_STATE_DIR": str(tmp_path / "state")}
    run_script("--legacy-dir", str(root), "--store", "data/trades.json", env=env)  # discovers every store
    with dg.DagsterInstance.get() as instance:
        assert "data/trades.jsonl" in instance.get_dynamic_partitions("legacy_stores")
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "winiswin_pipelines.definitions",
         "--select", "legacy_trades", "--partition", "data/trades.jsonl",
         "--config-json", '{"execution": {"config": {"in_process": {}}}}'],  # one process: a faster test
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Asset check 'legacy_accounting' on 'legacy_trades' passed" in completed.stderr
    # trades.json's rows, then trades.jsonl's 6 records (the D trade twice)
    assert count(db, "legacy_quarantine") >= 10 and "legacy:data/trades.jsonl" in sources(db)


def sources(db: DatabaseManager) -> set[str]:
    with db.engine.connect() as conn:
        return set(conn.execute(text("SELECT DISTINCT source FROM trades")).scalars())


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/migrate_system.py", *args],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240,
    )


def test_migrate_system_script(db, database_url, legacy, tmp_path):
    root, expected = legacy
    env = {**os.environ, "DATABASE_URL": database_url, "WINISWIN_STATE_DIR": str(tmp_path / "state")}
    dry = run_script("--legacy-dir", str(root), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "data/trades.jsonl: read 16 = would migrate 6 + paired 0 + quarantine 10 (dry run)" in dry.stdout
    assert count(db, "trades") == 0
    real = run_script("--legacy-dir", str(root), env=env)
    assert real.returncode == 0, real.stdout + real.stderr
    assert real.stdout.count("verified against PostgreSQL: passed") == len(expected.stores)
    assert "skipped data/signal_competitions.jsonl" in real.stdout
    assert "partial exits: 0 linked to their trade (0 by this run), 2 unlinked" in real.stdout
    assert "no real BTCUSDT LONG trade was held at 2025-11-01 10:00:00 UTC" in real.stdout
    assert count(db, "legacy_quarantine") == len(expected.quarantine_reasons)
    missing = run_script("--legacy-dir", str(tmp_path / "no-such-folder"), env=env)
    assert missing.returncode == 2 and f"legacy folder not found: {tmp_path / 'no-such-folder'}" in missing.stderr


def test_make_run_step_migrates_the_bundled_samples(db, demo_runner):
    lines = legacy_migration(demo_runner)
    assert "accounting check: passed" in lines
    assert any(line.startswith("example_positions.csv: read 100 = inserted 50") for line in lines)
    assert count(db, "trades") == 54
