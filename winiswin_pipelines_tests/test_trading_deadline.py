"""A bounded live session ends on time even while the exchange refuses it (a 418 ban whose Retry-After
outlasts the session): `trading_session_job`'s `max_duration_seconds` is a promise."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace

import pytest

from winiswin_pipelines.marketdata.binance import BinanceAPIError
from winiswin_pipelines.trading.runner import DEADLINE_GRACE_SECONDS, SessionOverran, run_session
from winiswin_pipelines_tests.trading_helpers import KEEP_OPEN, SYMBOLS, ListFeed, live_env, quiet

BOUND = dt.timedelta(seconds=2)
SLACK_SECONDS = 3.0  # thread and loop start, the final heartbeat


@pytest.mark.parametrize("banned", ["from the start", "once running"])
def test_a_bounded_live_session_ends_on_time_while_the_exchange_bans_it(db, server, monkeypatch, banned):
    live_env(monkeypatch, server)
    if banned == "from the start":
        server.ban_for(120)
        feed = ListFeed(quiet())
    else:  # the ban lands after start-up; the session then waits on a feed with nothing to say
        feed = ListFeed(quiet(), actions={1: lambda: server.ban_for(120)}, then_wait=True)
    started = time.monotonic()
    try:
        result = run_session(db, session_id=f"deadline-{banned.replace(' ', '-')}", mode="live", feed=feed,
                             config=replace(KEEP_OPEN, max_duration=BOUND), symbols=SYMBOLS,
                             rest_url=server.rest_url)
        outcome = result.status
    except (SessionOverran, BinanceAPIError) as ended:
        outcome = type(ended).__name__
    elapsed = time.monotonic() - started
    assert elapsed < BOUND.total_seconds() + DEADLINE_GRACE_SECONDS + SLACK_SECONDS, (outcome, elapsed)
    assert server.refused_requests >= 1 or banned == "once running"
