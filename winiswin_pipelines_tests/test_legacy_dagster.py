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
from winiswin_pipelines.defs.legacy import build_legacy_migration, migrate_bundled_samples
from winiswin_pipelines.resources import PostgresResource
from winiswin_pipelines.sample_steps import SampleRunner
from winiswin_pipelines_tests.legacy_fixtures import write_legacy_folder

PROJECT = settings.PROJECT_DIR


@pytest.fixture
def legacy(tmp_path: Path):
    root = tmp_path / "legacy"
    return root, write_legacy_folder(root)


def all_partitions(asset: dg.AssetsDefinition) -> dict[str, str]:
    keys = asset.partitions_def.get_partition_keys()
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def count(db: DatabaseManager, table: str) -> int:
    with db.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_assets_migrate_every_partition_and_the_check_proves_it(db, database_url, legacy, dagster_instance):
    root, expected = legacy
    asset, check = build_legacy_migration(root)
    assert set(asset.partitions_def.get_partition_keys()) == set(expected.stores)
    resources = {"postgres": PostgresResource(database_url=database_url)}
    result = dg.materialize([asset, check], instance=dagster_instance, resources=resources, tags=all_partitions(asset))
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["records missing in PostgreSQL"].value == 0
    metadata = result.asset_materializations_for_node("legacy_trades")[0].metadata
    read = sum(store["read"] for store in expected.stores.values())
    assert metadata["records read"].value == read and metadata["balanced"].value is True
    assert metadata["records quarantined"].value == len(expected.quarantine_reasons)
    assert "| `data/trades.jsonl` | jsonl | 16 |" in metadata["per source"].value
    assert "| `data/trades.jsonl` | B' | 1 | 1 | 0 |" in metadata["per variant"].value
    assert "data/signal_competitions.jsonl" in metadata["files skipped (no trades)"].value
    assert count(db, "legacy_quarantine") == len(expected.quarantine_reasons)


def test_blocking_check_fails_when_a_row_is_missing(db, database_url, legacy, dagster_instance):
    root, _ = legacy
    asset, check = build_legacy_migration(root)
    resources = {"postgres": PostgresResource(database_url=database_url)}
    first = dg.materialize([asset, check], instance=dagster_instance, resources=resources, partition_key="data/trades.json")
    assert first.get_asset_check_evaluations()[0].passed
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM trades WHERE trade_uid = 'legacy:ETHUSDT_1761400000.100000'"))
    rerun_check = dg.materialize(  # the check alone, on the same partition
        [asset, check], instance=dagster_instance, resources=resources, tags={"dagster/partition": "data/trades.json"},
        selection=dg.AssetSelection.checks(check), raise_on_error=False,
    )
    (evaluation,) = rerun_check.get_asset_check_evaluations()
    assert not evaluation.passed
    assert "legacy:ETHUSDT_1761400000.100000" in evaluation.metadata["missing (examples)"].value


def test_dagster_cli_materializes_a_partition(db, database_url, legacy, tmp_path):
    root, _ = legacy
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(DATABASE_URL=database_url, WINISWIN_LEGACY_DIR=str(root), WINISWIN_STATE_DIR=str(tmp_path / "state"))
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "winiswin_pipelines.definitions",
         "--select", "legacy_trades", "--partition", "data/trades.jsonl",
         "--config-json", '{"execution": {"config": {"in_process": {}}}}'],  # one process: a faster test
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Asset check 'legacy_accounting' on 'legacy_trades' passed" in completed.stderr
    assert count(db, "trades") == 5 and count(db, "legacy_quarantine") == 10  # 6 records, the D trade twice


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
    assert count(db, "legacy_quarantine") == len(expected.quarantine_reasons)
    missing = run_script("--legacy-dir", str(tmp_path / "no-such-folder"), env=env)
    assert missing.returncode == 2 and f"legacy folder not found: {tmp_path / 'no-such-folder'}" in missing.stderr


def test_make_run_step_migrates_the_bundled_samples(db, database_url, dagster_instance):
    runner = SampleRunner(dagster_instance, {"postgres": PostgresResource(database_url=database_url)}, db)
    lines = migrate_bundled_samples(runner)
    assert "accounting check: passed" in lines
    assert any(line.startswith("example_positions.csv: read 100 = inserted 50") for line in lines)
    assert count(db, "trades") == 54
