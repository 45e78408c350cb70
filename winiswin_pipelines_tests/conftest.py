"""Test fixtures: a real PostgreSQL server, a fresh database per test, a real S3 server on loopback.

The server is DATABASE_URL's when it is set (each test gets its own database on it), else an
embedded server started for the session in a temporary folder. Each test database is a copy of a
template migrated once to head, so a fresh database costs milliseconds.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pytest
from moto.server import ThreadedMotoServer
from psycopg import sql
from sqlalchemy.engine import URL

from winiswin_pipelines.db.embedded import EmbeddedPostgres, admin_connection, drop_database
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.url import normalize_database_url
from winiswin_pipelines.definitions import defs
from winiswin_pipelines.demo.runner import DemoRunner
from winiswin_pipelines.marketdata.feed import ReplayFeed
from winiswin_pipelines.resources import PostgresResource
from winiswin_pipelines.settings import PROJECT_DIR
from winiswin_pipelines_tests.binance_server import LocalBinanceServer

# The code location, loaded once before any test makes (and disposes of) a Dagster instance: the
# defs-folder loader reads the current instance's state storage, which a torn-down test instance
# would leave pointing at a deleted folder.
CODE_LOCATION = defs()

# Durability is not under test when a whole server is thrown away after the session.
_FAST_SERVER = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@pytest.fixture(scope="session", autouse=True)
def isolated_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Generated state (spools, local cold storage) goes to a temporary folder, not the project's."""
    state = tmp_path_factory.mktemp("state")
    previous = os.environ.get("WINISWIN_STATE_DIR")
    os.environ["WINISWIN_STATE_DIR"] = str(state)
    yield state
    if previous is None:
        os.environ.pop("WINISWIN_STATE_DIR", None)
    else:
        os.environ["WINISWIN_STATE_DIR"] = previous


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    """URL of a maintenance database on a real PostgreSQL server."""
    if os.environ.get("DATABASE_URL"):
        yield normalize_database_url(os.environ["DATABASE_URL"])
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), server_options=_FAST_SERVER)
    info = server.ensure_running()
    yield info.url("postgres")
    server.destroy()


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the test module's own, which its tests may stop and restart."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("own-pg"), server_options=_FAST_SERVER)
    server.ensure_running()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def template_database(pg_server: URL) -> Iterator[str]:
    name = f"winiswin_template_{uuid.uuid4().hex[:8]}"
    with admin_connection(pg_server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    manager = DatabaseManager(pg_server.set(database=name).render_as_string(hide_password=False))
    manager.dispose()
    yield name
    drop_database(pg_server, name)


def create_test_database(pg_server: URL, template: str | None) -> str:
    name = f"winiswin_test_{uuid.uuid4().hex[:12]}"
    with admin_connection(pg_server) as conn:
        statement = "CREATE DATABASE {} TEMPLATE {}" if template else "CREATE DATABASE {}"
        identifiers = [sql.Identifier(name)] + ([sql.Identifier(template)] if template else [])
        conn.execute(sql.SQL(statement).format(*identifiers))
    return name


@pytest.fixture
def database_url(pg_server: URL, template_database: str) -> Iterator[str]:
    """A fresh database at the newest schema, as a DATABASE_URL string (with password)."""
    name = create_test_database(pg_server, template_database)
    yield pg_server.set(database=name).render_as_string(hide_password=False)
    drop_database(pg_server, name)


@pytest.fixture
def empty_database_url(pg_server: URL) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = create_test_database(pg_server, None)
    yield pg_server.set(database=name).render_as_string(hide_password=False)
    drop_database(pg_server, name)


@pytest.fixture
def db(database_url: str) -> Iterator[DatabaseManager]:
    manager = DatabaseManager(database_url)
    yield manager
    manager.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol HTTP server (moto) on loopback; credentials are set for boto3."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the loopback S3 server."""
    name = f"winiswin-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def dagster_instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def postgres_dagster_home(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGSTER_HOME with the project's dagster.yaml, storing runs on the test database's server."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_DIR / "config" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DATABASE_URL", database_url)
    return home


@pytest.fixture
def demo_runner(db: DatabaseManager, database_url: str, dagster_instance: dg.DagsterInstance) -> DemoRunner:
    """The `make run` steps' runner on the test database, through the code location's definitions."""
    return DemoRunner(dagster_instance, CODE_LOCATION, db,
                      resources={"postgres": PostgresResource(database_url=database_url)})


@pytest.fixture
def code_location() -> dg.Definitions:
    """The code location's definitions (`winiswin_pipelines.definitions`), with its resources."""
    return CODE_LOCATION


@pytest.fixture(scope="module")
def capture_events() -> list:
    """The bundled BTCUSDT + ETHUSDT capture (2024-07-18/19), loaded once per module."""
    return ReplayFeed().load()


@pytest.fixture
def server() -> Iterator[LocalBinanceServer]:
    """The local Binance server with BTCUSDT and ETHUSDT, their mark prices set (60,000 and 3,000)."""
    with LocalBinanceServer(("BTCUSDT", "ETHUSDT")) as running:
        running.set_mark_price("BTCUSDT", 60_000.0)
        running.set_mark_price("ETHUSDT", 3_000.0)
        yield running
