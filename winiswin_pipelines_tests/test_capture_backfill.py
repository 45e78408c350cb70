"""Historical klines over REST: paging through /fapi/v1/klines within a request-weight budget, against
the local server on loopback, and the `klines` asset's backfill of the days no file covers."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import dagster as dg
import pandas as pd
import pytest
from sqlalchemy import text

from winiswin_pipelines.defs.marketdata import klines, klines_ohlc_consistent
from winiswin_pipelines.defs.partitions import range_tags
from winiswin_pipelines.marketdata.binance import BinanceAPIError, BinanceRestClient, RateWindow, request_weight
from winiswin_pipelines.marketdata.kline_backfill import REST_SOURCE, days_without_files
from winiswin_pipelines.marketdata.samples import MARKET_SAMPLES_DIR, scan_market_folder
from winiswin_pipelines.resources import PostgresResource
from winiswin_pipelines_tests.binance_server import LocalBinanceServer

DAY_MS = 86_400_000
JULY_10 = dt.date(2024, 7, 10)
JULY_10_MS = int(dt.datetime(2024, 7, 10, tzinfo=dt.UTC).timestamp() * 1000)


@pytest.fixture
def server():
    with LocalBinanceServer(("BTCUSDT", "ETHUSDT"), history_from=JULY_10, tick_seconds=0.05) as running:
        yield running


async def test_klines_page_through_a_day_as_binance_serves_them(server):
    async with BinanceRestClient(server.rest_url) as rest:
        day = await rest.klines_between("BTCUSDT", "1m", JULY_10_MS, JULY_10_MS + DAY_MS, page=500)
        one_page = await rest.klines_between("BTCUSDT", "1m", JULY_10_MS, JULY_10_MS + DAY_MS)
        newest = await rest.klines("BTCUSDT", "1h", end_time=JULY_10_MS + DAY_MS - 1, limit=3)
        with pytest.raises(BinanceAPIError, match="-1130"):
            await rest.klines("BTCUSDT", "1m", limit=1501)
    opens = [row[0] for row in day]
    assert len(day) == 1440 and opens == list(range(JULY_10_MS, JULY_10_MS + DAY_MS, 60_000))
    assert one_page == day  # deterministic history: the same bars whatever the page size
    assert [int(r["limit"]) for r in server.klines_requests[:3]] == [500, 500, 500]  # 1440 bars: three pages
    assert [int(r["startTime"]) for r in server.klines_requests[:3]] == [JULY_10_MS + i * 500 * 60_000 for i in range(3)]
    assert server.klines_requests[3]["limit"] == "1500" and len(server.klines_requests) == 5
    assert [row[0] for row in newest] == [JULY_10_MS + (21 + i) * 3_600_000 for i in range(3)]  # the last 3 of the day
    for row in day:
        assert float(row[3]) <= min(float(row[1]), float(row[4])) <= max(float(row[1]), float(row[4])) <= float(row[2])


async def test_requests_wait_for_their_weight_and_for_a_429(server):
    # Our own budget: 20 weight a second; five pages of 1,500 bars cost 10 each, so they take 2 s.
    server.weight_window = 1.0
    async with BinanceRestClient(server.rest_url, weight_limiter=RateWindow(20, 1.0)) as rest:
        started = time.monotonic()
        rows = await rest.klines_between("ETHUSDT", "1m", JULY_10_MS, JULY_10_MS + 5 * DAY_MS)
        elapsed = time.monotonic() - started
    assert len(rows) == 5 * 1440 and 2.0 <= elapsed < 4.0
    # The exchange's window starts when a request arrives, ours when it is sent: one request of skew.
    assert request_weight("/fapi/v1/klines", {"limit": 1500}) == 10 and server.max_used_weight <= 30
    # The exchange's limit, lower than our budget: it answers 429 with Retry-After, the client waits
    # it out and goes on (the IP's used weight comes back in X-MBX-USED-WEIGHT-1M).
    server.weight_limit = 25
    server._weights.clear()
    async with BinanceRestClient(server.rest_url) as rest:
        started = time.monotonic()
        rows = await rest.klines_between("ETHUSDT", "1m", JULY_10_MS, JULY_10_MS + 4 * DAY_MS)
        elapsed = time.monotonic() - started
        assert rest.used_weight is not None and rest.used_weight <= 25
    assert len(rows) == 4 * 1440 and server.refused_requests >= 1 and elapsed >= 1.0


async def test_rate_window_counts_a_sliding_window():
    window = RateWindow(10, 0.3)
    started = time.monotonic()
    for _ in range(6):
        await window.acquire(5)  # 2 fit in any 0.3 s: at 0, 0, 0.3, 0.3, 0.6, 0.6 s
    assert 0.55 <= time.monotonic() - started < 1.0 and window.used() == 10
    with pytest.raises(ValueError, match="never fit"):
        await window.acquire(11)
    await asyncio.sleep(0.31)
    assert window.used() == 0  # all spent at 0.6 s: out of the window by now


def test_days_without_files_are_per_symbol():
    files = scan_market_folder(MARKET_SAMPLES_DIR)
    missing = days_without_files(files, ["btcusdt", "ETHUSDT", "SOLUSDT"], dt.date(2024, 7, 17), dt.date(2024, 7, 19))
    assert missing == {"BTCUSDT": [dt.date(2024, 7, 17)], "ETHUSDT": [dt.date(2024, 7, 17)],
                       "SOLUSDT": [dt.date(2024, 7, 17), dt.date(2024, 7, 18), dt.date(2024, 7, 19)]}
    april = days_without_files(files, ["BTCUSDT"], dt.date(2023, 4, 6), dt.date(2023, 4, 8))
    assert april == {}  # the monthly 5m CSV names every day of April (the 7th's rows are missing inside it)


def test_klines_asset_backfills_the_days_without_a_file(db, database_url, dagster_instance, server):
    result = dg.materialize(
        [klines, klines_ohlc_consistent], instance=dagster_instance, tags=range_tags("2024-07-16", "2024-07-18"),
        resources={"postgres": PostgresResource(database_url=database_url)},
        run_config={"ops": {"klines": {"config": {"rest_backfill": True, "backfill_symbols": ["BTCUSDT", "ETHUSDT"],
                                                  "rest_url": server.rest_url}}}},
    )
    assert result.success and all(check.passed for check in result.get_asset_check_evaluations())
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("klines")[0].metadata.items()}
    # 16th and 17th from REST (one page of 1,440 bars each), the 18th from its capture files only.
    assert metadata["rest_backfill_rows"] == 2 * 2 * 1440 and metadata["rest_backfill_requests"] == 4
    assert "BTCUSDT: 2024-07-16, 2024-07-17" in metadata["rest_backfill_days"]
    with db.engine.connect() as conn:
        stored = pd.read_sql(text("SELECT symbol, source, (open_time AT TIME ZONE 'UTC')::date AS day, count(*) "
                                  "FROM klines GROUP BY 1, 2, 3 ORDER BY 1, 3"), conn)
    assert stored.values.tolist() == [
        ["BTCUSDT", REST_SOURCE, dt.date(2024, 7, 16), 1440], ["BTCUSDT", REST_SOURCE, dt.date(2024, 7, 17), 1440],
        ["BTCUSDT", "capture:trades", dt.date(2024, 7, 18), 1],
        ["ETHUSDT", REST_SOURCE, dt.date(2024, 7, 16), 1440], ["ETHUSDT", REST_SOURCE, dt.date(2024, 7, 17), 1440],
        ["ETHUSDT", "capture:trades", dt.date(2024, 7, 18), 1],
    ]
    assert [r["symbol"] for r in server.klines_requests] == ["BTCUSDT", "BTCUSDT", "ETHUSDT", "ETHUSDT"]
    again = dg.materialize([klines], instance=dagster_instance, tags=range_tags("2024-07-16", "2024-07-18"),
                           resources={"postgres": PostgresResource(database_url=database_url)},
                           run_config={"ops": {"klines": {"config": {"rest_backfill": True,
                                                                     "backfill_symbols": ["BTCUSDT", "ETHUSDT"],
                                                                     "rest_url": server.rest_url}}}})
    counts = again.asset_materializations_for_node("klines")[0].metadata
    assert (counts["inserted"].value, counts["unchanged"].value) == (0, 4 * 1440 + 2)  # idempotent


def test_klines_backfill_failure_names_the_server(database_url, dagster_instance):
    result = dg.materialize(
        [klines], instance=dagster_instance, partition_key="2024-07-16", raise_on_error=False,
        resources={"postgres": PostgresResource(database_url=database_url)},
        run_config={"ops": {"klines": {"config": {"rest_backfill": True, "backfill_symbols": ["BTCUSDT"],
                                                  "rest_url": "http://127.0.0.1:1"}}}},
    )
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert "kline backfill of BTCUSDT from http://127.0.0.1:1 failed" in message


def test_daily_schedule_turns_the_rest_backfill_on():
    from winiswin_pipelines.definitions import defs

    definitions = defs()
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2024, 7, 20, 0, 20, tzinfo=dt.UTC),
                                        repository_def=definitions.get_repository_def())
    [request] = definitions.resolve_schedule_def("market_data_daily").evaluate_tick(context).run_requests
    assert request.run_config["ops"]["klines"]["config"]["rest_backfill"] is True
