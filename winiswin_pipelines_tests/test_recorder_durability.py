"""The recorder loses and duplicates nothing when PostgreSQL stops mid-stream or the process is killed.

Each test runs against its own embedded PostgreSQL server (stopping the shared one would break the
other tests) and checks that the database ends up holding the recorded stream exactly once, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest_asyncio

from winiswin_pipelines import settings
from winiswin_pipelines.db.embedded import EmbeddedPostgres, ensure_database_exists
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.trading.recorder import UnifiedTradeRecorder
from winiswin_pipelines_tests.test_recorder import (
    assert_prefix_recorded,
    event_stream,
    record,
)


@pytest_asyncio.fixture(loop_scope="function")
async def own_db(own_server: EmbeddedPostgres):
    info = own_server.ensure_running()
    name = f"recorder_{uuid.uuid4().hex[:10]}"
    ensure_database_exists(info.url("postgres"), name)
    manager = DatabaseManager(info.url(name).render_as_string(hide_password=False))
    yield manager
    await manager.async_engine.dispose()
    manager.dispose()


async def test_postgres_stopped_mid_stream_and_restarted(own_server, own_db, tmp_path):
    events = event_stream(60)
    recorder = UnifiedTradeRecorder(own_db, source="paper", spool_dir=tmp_path / "spool", batch_size=25,
                                    flush_interval=0.01)
    await recorder.start()
    third = len(events) // 3
    for i, event in enumerate(events):
        await record(recorder, event)
        await asyncio.sleep(0)
        if i == third:
            await recorder.flush()
            await asyncio.to_thread(own_server.stop)
        elif i == 2 * third:
            await recorder.flush()
            assert recorder.metrics()["spool_pending"] > 0
            await asyncio.to_thread(own_server.ensure_running)
    await recorder.close()
    metrics = recorder.metrics()
    assert assert_prefix_recorded(own_db, events, "paper") == len(events)
    assert metrics["written"] == metrics["queued"] == len(events)  # exactly once: nothing written twice
    assert metrics["spooled"] >= third and metrics["retried"] >= 1
    assert metrics["spool_pending"] == 0 and not list((tmp_path / "spool").glob("lane-*/segment-*"))
    assert metrics["last_error"] and own_db.url.password not in metrics["last_error"]


def child_main() -> None:
    """The killed process: records the stream slowly and prints how far it is durable."""
    manager = DatabaseManager(os.environ["RECORDER_TEST_URL"], migrate=False)
    events = event_stream(int(os.environ["RECORDER_TEST_PAIRS"]))

    async def run() -> None:
        recorder = UnifiedTradeRecorder(manager, source="paper", spool_dir=Path(os.environ["RECORDER_TEST_SPOOL"]),
                                        batch_size=20, flush_interval=0.01)
        await recorder.start()
        for i, event in enumerate(events, start=1):
            await record(recorder, event)
            await asyncio.sleep(0.002)
            if i % 10 == 0:
                await recorder.flush()
                print(f"durable {i}", flush=True)

    asyncio.run(run())


def _wait_for_durable(child: subprocess.Popen, at_least: int) -> int:
    for line in child.stdout:
        durable = int(line.split()[1])
        if durable >= at_least:
            return durable
    raise AssertionError(f"the child ended before {at_least} records were durable (rc={child.wait()})")


async def test_killed_process_loses_and_duplicates_nothing(own_server, own_db, tmp_path):
    events = event_stream(400)
    spool = tmp_path / "spool"
    env = {**os.environ, "RECORDER_TEST_URL": own_db.url.render_as_string(hide_password=False),
           "RECORDER_TEST_SPOOL": str(spool), "RECORDER_TEST_PAIRS": "400"}
    code = "from winiswin_pipelines_tests.test_recorder_durability import child_main; child_main()"
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True,
                             cwd=settings.PROJECT_DIR)
    try:
        written_to_db = _wait_for_durable(child, 200)
        own_server.stop()  # from here on the child spools
        durable = _wait_for_durable(child, written_to_db + 150)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL  # killed mid-stream, not finished
    finally:
        child.kill()
        child.stdout.close()
    assert durable < len(events) and list(spool.glob("lane-*/segment-*"))
    own_server.ensure_running()
    recorder = UnifiedTradeRecorder(own_db, source="paper", spool_dir=spool)
    await recorder.start()  # writes what the killed process spooled
    await recorder.close()
    recorded = assert_prefix_recorded(own_db, events, "paper")
    assert recorded >= durable
    assert recorder.metrics()["written"] >= durable - written_to_db
    assert not list(spool.glob("lane-*/segment-*"))
