"""Funding-rate history: paging /fapi/v1/fundingRate against the local server, and the `funding_rates` asset."""

from __future__ import annotations

import asyncio
import datetime as dt

import dagster as dg
import pytest
from sqlalchemy import text

from winiswin_pipelines.defs.marketdata import funding_rates
from winiswin_pipelines.defs.partitions import range_tags
from winiswin_pipelines.marketdata.binance import BinanceRestClient, RateWindow
from winiswin_pipelines.marketdata.funding import fetch_funding_rates, funding_history, parse_funding_rate
from winiswin_pipelines.resources import PostgresResource
from winiswin_pipelines_tests.binance_server import LocalBinanceServer

UTC = dt.UTC


@pytest.fixture(scope="module")
def server():
    with LocalBinanceServer(("BTCUSDT", "ETHUSDT")) as running:
        yield running


def test_parse_keeps_the_mark_price_and_tolerates_old_records_without_one():
    rate = parse_funding_rate({"symbol": "BTCUSDT", "fundingRate": "-0.03750000", "fundingTime": 1570608000000,
                               "markPrice": "34287.54619963"})
    assert rate.funding_time == dt.datetime(2019, 10, 9, 8, tzinfo=UTC)
    assert (rate.funding_rate, rate.mark_price) == (-0.0375, 34287.54619963)
    assert parse_funding_rate({"symbol": "BTCUSDT", "fundingRate": "0.0001", "fundingTime": 1570608000000,
                               "markPrice": ""}).mark_price is None


def test_a_year_of_funding_comes_in_pages_of_1000_at_00_08_16_utc(server):
    start, end = dt.datetime(2023, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 1, tzinfo=UTC)
    before = len(server.funding_requests)
    fetched = fetch_funding_rates(server.rest_url, ["btcusdt"], start, end)
    requests = server.funding_requests[before:]
    assert len(fetched.rates) == 365 * 3 and fetched.requests == len(requests) == 2
    times = [rate.funding_time for rate in fetched.rates]
    assert times == sorted(set(times)) and times[0] == start and times[-1] == dt.datetime(2023, 12, 31, 16, tzinfo=UTC)
    assert {(t.hour, t.minute) for t in times} == {(0, 0), (8, 0), (16, 0)}
    # Binance's paging: both ends inclusive (the end is the last millisecond of the window), the next page
    # from just after the last event of a full one.
    assert requests[0] == {"symbol": "BTCUSDT", "startTime": str(int(start.timestamp() * 1000)),
                           "endTime": str(int(end.timestamp() * 1000) - 1), "limit": "1000"}
    assert int(requests[1]["startTime"]) == int(times[999].timestamp() * 1000) + 1
    assert all(rate.mark_price and rate.mark_price > 0 for rate in fetched.rates)


def test_requests_wait_for_the_funding_limit_of_their_own(server):
    async def fetch():
        async with BinanceRestClient(server.rest_url) as client:
            client.funding_requests = RateWindow(2, 0.5)  # 2 requests per half second instead of 250 per 5 min
            rates = await funding_history(client, "ETHUSDT", dt.datetime(2023, 4, 1, tzinfo=UTC),
                                          dt.datetime(2023, 4, 3, tzinfo=UTC), page=2)
            return rates, client.funding_requests.waited

    rates, waited = asyncio.run(fetch())
    assert len(rates) == 6 and waited > 0  # 4 requests of 2 events (the last one empty), the 3rd one waited


def test_funding_rates_asset_stores_a_month_idempotently(db, database_url, dagster_instance, server):
    resources = {"postgres": PostgresResource(database_url=database_url)}
    config = {"ops": {"funding_rates": {"config": {"symbols": ["BTCUSDT", "ETHUSDT"], "rest_url": server.rest_url}}}}
    metadata = []
    for _ in range(2):
        result = dg.materialize([funding_rates], instance=dagster_instance, resources=resources, run_config=config,
                                tags=range_tags("2023-04-01", "2023-04-30"))
        assert result.success
        metadata.append({k: v.value for k, v in result.asset_materializations_for_node("funding_rates")[0].metadata
                         .items()})
    assert metadata[0]["dagster/row_count"] == 2 * 30 * 3 and metadata[0]["inserted"] == 180
    assert metadata[1]["inserted"] == 0 and metadata[1]["unchanged"] == 180  # re-running changes nothing
    assert metadata[0]["requests"] == 2 and "| BTCUSDT | 90 |" in metadata[0]["rates"]
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT symbol, count(*), min(funding_time), max(funding_time) FROM funding_rates "
                                 "GROUP BY symbol ORDER BY symbol")).all()
    assert [(s, n) for s, n, *_ in rows] == [("BTCUSDT", 90), ("ETHUSDT", 90)]
    assert rows[0][2] == dt.datetime(2023, 4, 1, tzinfo=UTC) and rows[0][3] == dt.datetime(2023, 4, 30, 16, tzinfo=UTC)
