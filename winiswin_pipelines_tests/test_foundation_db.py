"""The data layer: schema versions, DatabaseManager, URLs, the embedded server, bulk upsert."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.dialects.postgresql import TIMESTAMP

from winiswin_pipelines.db.bulk import copy_upsert
from winiswin_pipelines.db.embedded import EmbeddedPostgres
from winiswin_pipelines.db.entry_times import (
    async_delete_entry_time,
    async_upsert_entry_time,
    get_all_entry_times,
    upsert_entry_time,
)
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import Base
from winiswin_pipelines.db.partitions import drop_daily_partition, existing_partitions, include_name
from winiswin_pipelines.db.url import DatabaseConfigError, mask_url, normalize_database_url

EXPECTED_TABLES = {
    "position_entry_times", "trades", "trade_partial_exits", "klines", "book_snapshots",
    "training_features", "archive_manifest", "legacy_quarantine",
}


def test_fresh_database_is_brought_to_head_with_every_table(empty_database_url: str) -> None:
    manager = DatabaseManager(empty_database_url)
    try:
        assert manager.current_revision() == manager.head_revision()
        tables = set(inspect(manager.engine).get_table_names())
        assert EXPECTED_TABLES | set(Base.metadata.tables) <= tables
        columns = {c["name"]: c for c in inspect(manager.engine).get_columns("position_entry_times")}
        assert set(columns) == {"symbol", "entry_time", "updated_at"}
        for name in ("entry_time", "updated_at"):
            assert isinstance(columns[name]["type"], TIMESTAMP) and columns[name]["type"].timezone
            assert columns[name]["nullable"] is False
        pk = inspect(manager.engine).get_pk_constraint("position_entry_times")
        assert pk["constrained_columns"] == ["symbol"]
    finally:
        manager.dispose()


def test_every_timestamp_column_is_timestamptz(db: DatabaseManager) -> None:
    with db.engine.connect() as conn:
        naive = conn.execute(text(
            "SELECT table_name || '.' || column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type = 'timestamp without time zone'"
        )).scalars().all()
    assert naive == []


def test_position_entry_times_round_trip_aware_datetimes(db: DatabaseManager) -> None:
    plus8 = dt.timezone(dt.timedelta(hours=8))
    opened = dt.datetime(2025, 11, 25, 18, 30, 15, 123456, tzinfo=plus8)
    with db.engine.begin() as conn:
        upsert_entry_time(conn, "BTCUSDT", opened)
        first_update = conn.execute(text("SELECT updated_at FROM position_entry_times")).scalar_one()
    with db.engine.begin() as conn:
        stored = get_all_entry_times(conn)["BTCUSDT"]
        assert stored == opened and stored.tzinfo == dt.UTC
        assert stored.hour == 10  # 18:30 at +08:00 is 10:30 UTC
        upsert_entry_time(conn, "BTCUSDT", opened + dt.timedelta(minutes=5))
    with db.engine.begin() as conn:
        assert get_all_entry_times(conn) == {"BTCUSDT": opened + dt.timedelta(minutes=5)}
        assert conn.execute(text("SELECT updated_at FROM position_entry_times")).scalar_one() > first_update
    with pytest.raises(ValueError, match="timezone-aware"), db.engine.begin() as conn:
        upsert_entry_time(conn, "ETHUSDT", dt.datetime(2025, 1, 1))


def test_async_engine_and_async_helpers(db: DatabaseManager) -> None:
    async def scenario() -> tuple[dt.datetime | None, bool, dt.datetime | None]:
        when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        async with db.async_engine.begin() as conn:
            await async_upsert_entry_time(conn, "ETHUSDT", when)
        async with db.async_engine.begin() as conn:
            read = (await conn.run_sync(get_all_entry_times)).get("ETHUSDT")
            deleted = await async_delete_entry_time(conn, "ETHUSDT")
            after = (await conn.run_sync(get_all_entry_times)).get("ETHUSDT")
        await db.async_engine.dispose()
        return read, deleted, after

    read, deleted, after = asyncio.run(scenario())
    assert read == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert deleted is True and after is None
    with db.engine.connect() as conn:  # the sync engine sees what the async one wrote
        assert conn.execute(text("SELECT count(*) FROM position_entry_times")).scalar_one() == 0


def test_migrations_and_models_agree(db: DatabaseManager) -> None:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_name": include_name, "compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_downgrade_upgrade_on_an_empty_database(empty_database_url: str) -> None:
    manager = DatabaseManager(empty_database_url, migrate=False)
    try:
        assert manager.current_revision() is None
        manager.upgrade()
        assert manager.current_revision() == manager.head_revision()
        manager.downgrade("base")
        assert manager.current_revision() is None
        assert set(inspect(manager.engine).get_table_names()) <= {"alembic_version"}
        manager.upgrade()
        assert manager.current_revision() == manager.head_revision()
        assert EXPECTED_TABLES <= set(inspect(manager.engine).get_table_names())
    finally:
        manager.dispose()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgres://u:pw@db.example:5432/app", "postgresql+psycopg://u:***@db.example:5432/app"),
        ("postgresql://u:pw@db.example/app", "postgresql+psycopg://u:***@db.example/app"),
        ("postgresql+psycopg2://u:pw@h/app?sslmode=require", "postgresql+psycopg://u:***@h/app?sslmode=require"),
    ],
)
def test_url_normalisation_to_psycopg3(raw: str, expected: str) -> None:
    url = normalize_database_url(raw)
    assert url.drivername == "postgresql+psycopg"
    assert url.password == "pw"
    assert mask_url(url) == expected


@pytest.mark.parametrize(
    "raw", ["not a url", "mysql://u:s3cret@h/db", "postgresql://u:s3cret@/db", "postgresql://u:s3cret@h"]
)
def test_malformed_url_names_the_variable_and_hides_the_password(raw: str) -> None:
    with pytest.raises(DatabaseConfigError) as error:
        normalize_database_url(raw)
    assert "DATABASE_URL" in str(error.value)
    assert "s3cret" not in str(error.value)


def test_unreachable_server_gives_one_clear_masked_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DatabaseConfigError) as error:
        DatabaseManager(f"postgres://winiswin:s3cret-pw@127.0.0.1:{port}/winiswin")
    message = str(error.value)
    assert "DATABASE_URL" in message and f"127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message and "***" in message


def test_embedded_server_starts_is_reused_and_stops(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "state")
    info = server.ensure_running()
    try:
        assert server.is_running()
        again = server.ensure_running()
        assert again.port == info.port and again.root == info.root
        pid = (info.data_dir / "postmaster.pid").read_text().split()[0]
        assert (again.data_dir / "postmaster.pid").read_text().split()[0] == pid  # same process reused
        manager = DatabaseManager(info.url().render_as_string(hide_password=False))
        with manager.engine.connect() as conn:
            assert conn.execute(text("SHOW listen_addresses")).scalar_one() == "127.0.0.1"
            assert conn.execute(text("SHOW TimeZone")).scalar_one() == "UTC"
        manager.dispose()
        assert oct((tmp_path / "state" / "postgres.json").stat().st_mode & 0o777) == "0o600"
    finally:
        assert server.stop() is True
    assert not server.is_running()
    assert server.stop() is False
    # destroy() deletes the data wherever it lives (a temporary folder when root's tmp_path is
    # unreachable for the service user), so throwaway servers leave nothing behind.
    assert info.data_dir.exists()
    server.ensure_running()
    server.destroy()
    assert not server.is_running()
    assert not Path(info.root).exists() and not (tmp_path / "state" / "postgres.json").exists()


def test_copy_upsert_counts_dedupes_and_leaves_equal_rows_alone(db: DatabaseManager) -> None:
    columns = ["trade_uid", "symbol", "side", "status", "entry_price", "features", "source"]
    rows = [
        ("t1", "BTCUSDT", "LONG", "OPEN", 100.0, {"rsi": 55}, "test"),
        ("t2", "ETHUSDT", "SHORT", "OPEN", 10.0, None, "test"),
        ("t1", "BTCUSDT", "LONG", "OPEN", 101.0, {"rsi": 56}, "test"),  # later duplicate wins
    ]
    with db.engine.begin() as conn:
        first = copy_upsert(conn, "trades", columns, rows, conflict_columns=["trade_uid"])
    assert (first.staged, first.inserted, first.updated, first.unchanged, first.duplicates) == (3, 2, 0, 0, 1)
    with db.engine.begin() as conn:
        again = copy_upsert(conn, "trades", columns, rows, conflict_columns=["trade_uid"])
        changed = copy_upsert(conn, "trades", columns, [("t2", "ETHUSDT", "SHORT", "CLOSED", 10.0, None, "test")],
                              conflict_columns=["trade_uid"])
    assert (again.inserted, again.updated, again.unchanged, again.duplicates) == (0, 0, 2, 1)
    assert (changed.inserted, changed.updated) == (0, 1)
    with db.engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT trade_uid, entry_price FROM trades")).all())
        features = conn.execute(text("SELECT features FROM trades WHERE trade_uid = 't1'")).scalar_one()
    assert stored == {"t1": 101.0, "t2": 10.0}
    assert features == {"rsi": 56}


def test_copy_upsert_creates_daily_partitions_and_a_day_drops_cleanly(db: DatabaseManager) -> None:
    day = dt.date(2023, 4, 5)
    start = dt.datetime(2023, 4, 4, 23, 55, tzinfo=dt.UTC)
    columns = ["symbol", "interval", "open_time", "close_time", "open", "high", "low", "close", "volume",
               "quote_volume", "trade_count", "taker_buy_base_volume", "taker_buy_quote_volume"]
    rows = [("BTCUSDT", "5m", start + dt.timedelta(minutes=5 * i), start + dt.timedelta(minutes=5 * i + 5),
             1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1, 0.5, 0.5) for i in range(3)]
    with db.engine.begin() as conn:
        copy_upsert(conn, "klines", columns, rows, conflict_columns=["symbol", "interval", "open_time"])
        assert {day - dt.timedelta(days=1), day} <= set(existing_partitions(conn, "klines"))
        assert drop_daily_partition(conn, "klines", day) is True
        remaining = conn.execute(text("SELECT open_time FROM klines")).scalars().all()
    assert remaining == [start]  # only the 04-04 bar is left


def test_upcoming_partitions_exist_after_start(db: DatabaseManager) -> None:
    today = dt.datetime.now(dt.UTC).date()
    with db.engine.connect() as conn:
        for table in ("klines", "book_snapshots"):
            days = set(existing_partitions(conn, table))
            assert {today, today + dt.timedelta(days=7)} <= days


def test_no_database_url_means_the_embedded_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("WINISWIN_STATE_DIR", str(tmp_path))
    manager = DatabaseManager()
    try:
        assert manager.url.host == "127.0.0.1"
        assert manager.current_revision() == manager.head_revision()
    finally:
        manager.dispose()
        EmbeddedPostgres(tmp_path).destroy()
    assert os.environ["WINISWIN_STATE_DIR"] == str(tmp_path)
