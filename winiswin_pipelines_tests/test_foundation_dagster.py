"""The Dagster shell: definitions load, the instance stores runs in PostgreSQL, resources work."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import create_engine, text

from winiswin_pipelines.coldstore import LocalColdStore, S3ColdStore, sha256_file
from winiswin_pipelines.resources import ColdStorageResource, PostgresResource, build_resources
from winiswin_pipelines.settings import PROJECT_DIR


def test_definitions_are_loadable_with_the_shared_resources(code_location: dg.Definitions) -> None:
    definitions = code_location
    dg.Definitions.validate_loadable(definitions)
    assert {"postgres", "cold_storage", "legacy_folder"} <= set(definitions.resources)


def test_the_code_location_loads_without_the_database_or_the_legacy_files(tmp_path: Path) -> None:
    """`dagster definitions validate` opens no connection and reads no data file: a closed port for the
    database and a legacy folder holding a named pipe (which blocks whoever reads it) change nothing."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    os.mkfifo(legacy / "trades.jsonl")
    env = {name: value for name, value in os.environ.items() if name != "DAGSTER_HOME"}
    env.update(DATABASE_URL="postgresql://winiswin:secret@127.0.0.1:1/winiswin", WINISWIN_LEGACY_DIR=str(legacy))
    started = time.monotonic()
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "winiswin_pipelines.definitions"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Validation successful" in completed.stdout + completed.stderr and time.monotonic() - started < 30


_WATCH_IMPORT = """
import os, sys
legacy = os.environ["WINISWIN_LEGACY_DIR"]
seen = []

def watch(event, args):
    if event in ("open", "os.scandir", "os.listdir") and args and str(args[0]).startswith(legacy):
        seen.append(f"{event} {args[0]}")
    elif event == "socket.connect" or (event == "subprocess.Popen" and "pg_ctl" in str(args[1])):
        seen.append(f"{event} {args[1]}")  # a connection, or the embedded PostgreSQL started

sys.addaudithook(watch)
from winiswin_pipelines.definitions import defs
definitions = defs()
definitions.resolve_asset_graph()
definitions.resolve_all_job_defs()
print(len(definitions.resolve_asset_graph().get_all_asset_keys()), "assets;", "; ".join(seen) or "no I/O")
"""


def test_importing_the_definitions_connects_to_nothing_and_reads_no_legacy_file(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    (legacy / "data").mkdir(parents=True)
    (legacy / "data" / "trades.jsonl").write_text('{"symbol": "BTCUSDT"}\n')
    env = {**os.environ, "DATABASE_URL": "postgresql://winiswin:secret@127.0.0.1:1/winiswin",
           "WINISWIN_LEGACY_DIR": str(legacy)}
    completed = subprocess.run([sys.executable, "-c", _WATCH_IMPORT], env=env, capture_output=True, text=True,
                               timeout=120, cwd=PROJECT_DIR)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip().endswith("assets; no I/O"), completed.stdout


def test_resources_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKET_NAME", "winiswin-cold")
    monkeypatch.setenv("S3_PREFIX", "prod")
    monkeypatch.setenv("AWS_ACCESS_KEY", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-example")
    resources = build_resources()
    cold = resources["cold_storage"]
    assert isinstance(cold.bucket_name, dg.EnvVar) and cold.bucket_name.env_var_name == "BUCKET_NAME"
    assert cold.aws_access_key_id.env_var_name == "AWS_ACCESS_KEY"
    assert cold.aws_secret_access_key.env_var_name == "AWS_SECRET_ACCESS_KEY"
    monkeypatch.delenv("BUCKET_NAME")
    assert build_resources()["cold_storage"].bucket_name == ""


def test_postgres_resource_gives_the_process_wide_manager(database_url: str) -> None:
    resource = PostgresResource(database_url=database_url)
    assert resource.manager is resource.manager
    with resource.manager.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM trades")).scalar_one() == 0


def test_dagster_instance_stores_runs_in_postgres(database_url: str, postgres_dagster_home: Path) -> None:

    @dg.asset
    def probe() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"ok": True})

    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([probe], instance=instance)
        assert result.success
        assert instance.get_run_by_id(result.run_id).is_success
    dagster_url = database_url.rsplit("/", 1)[0] + "/dagster"
    engine = create_engine(dagster_url.replace("postgresql+psycopg://", "postgresql+psycopg2://"))
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM runs WHERE run_id = :id"), {"id": result.run_id})
        assert stored.scalar_one() == 1
    engine.dispose()


def _round_trip(store, tmp_path: Path) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"winiswin" * 1000)
    checksum = sha256_file(source)
    assert checksum == hashlib.sha256(source.read_bytes()).hexdigest()
    stored = store.put_file(source, "table=klines/date=2023-04-05/part-00000.parquet", checksum)
    assert (stored.size, stored.sha256) == (8000, checksum)
    assert store.list_keys("table=klines/") == ["table=klines/date=2023-04-05/part-00000.parquet"]
    copy = tmp_path / "copy.bin"
    store.download(stored.key, copy)
    assert copy.read_bytes() == source.read_bytes()
    store.delete(stored.key)
    assert store.head(stored.key) is None and store.list_keys() == []


def test_local_cold_store_round_trip(tmp_path: Path) -> None:
    _round_trip(LocalColdStore(tmp_path / "cold"), tmp_path)


def test_s3_cold_store_round_trip_on_the_loopback_s3_server(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    store = ColdStorageResource(bucket_name=s3_bucket, prefix="archive", endpoint_url=s3_endpoint).store()
    assert isinstance(store, S3ColdStore)
    _round_trip(store, tmp_path)
    assert store.uri("x") == f"s3://{s3_bucket}/archive/x"
