"""ReplayFeed over the real captures, FeedWriter into the hot tables, StoredFeed reading them back."""

from __future__ import annotations

import datetime as dt
import itertools
import time

import pytest
from sqlalchemy import text

from winiswin_pipelines.marketdata import samples
from winiswin_pipelines.marketdata.feed import BookEvent, FeedWriter, KlineEvent, ReplayFeed, StoredFeed
from winiswin_pipelines.marketdata.klines import read_kline_csv

JULY_18 = [samples.CAPTURE_BTCUSDT_20240718, samples.CAPTURE_ETHUSDT_20240718]
APRIL_2023 = [samples.CAPTURE_BTCUSDT_20230404, samples.CAPTURE_BTCUSDT_20230405]


async def replay(feed: ReplayFeed) -> list:
    return [event async for event in feed.events()]


async def test_replay_yields_time_ordered_events_deterministically():
    first, second = await replay(ReplayFeed(JULY_18)), await replay(ReplayFeed(JULY_18))
    assert first == second
    times = [event.time for event in first]
    assert times == sorted(times)
    books = [e for e in first if isinstance(e, BookEvent)]
    assert {e.symbol for e in books} == {"BTCUSDT", "ETHUSDT"}
    for symbol in ("BTCUSDT", "ETHUSDT"):
        grid = [e.exchange_time for e in books if e.symbol == symbol]
        assert all(b - a == dt.timedelta(seconds=1) for a, b in itertools.pairwise(grid))  # a book every second
    assert all(e.best_bid < e.best_ask and len(e.bid_prices) == len(e.ask_prices) == 10 for e in books)
    klines = [e for e in first if isinstance(e, KlineEvent)]
    # 23:57 and 23:59 are partial in this capture: only 23:58 is complete for each symbol.
    assert [(e.symbol, e.open_time.strftime("%H:%M")) for e in klines] == [("BTCUSDT", "23:58"), ("ETHUSDT", "23:58")]
    assert all(e.closed for e in klines)


async def test_replayed_5m_bar_equals_binance_published_bar():
    events = await replay(ReplayFeed(APRIL_2023, kline_interval="5m"))
    [bar] = [e for e in events if isinstance(e, KlineEvent)]
    published = read_kline_csv(samples.BTCUSDT_5M_2023_04_CSV, symbol="BTCUSDT", interval="5m")
    row = published[published["open_time"] == bar.open_time].iloc[0]
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.quote_volume, bar.trade_count,
            bar.taker_buy_base_volume, bar.taker_buy_quote_volume) == (
        row.open, row.high, row.low, row.close, row.volume, row.quote_volume, row.trade_count,
        row.taker_buy_base_volume, row.taker_buy_quote_volume)


async def test_replay_paced_by_speed_is_faster_than_real_time():
    feed = ReplayFeed([samples.CAPTURE_BTCUSDT_20230404], speed=200)
    feed.load()
    started = time.perf_counter()
    events = await replay(feed)
    elapsed = time.perf_counter() - started
    span = (events[-1].time - events[0].time).total_seconds()
    assert span > 60 and span / 200 * 0.9 <= elapsed < span / 50


def test_replay_refuses_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="capture files not found"):
        ReplayFeed([tmp_path / "missing.gz"])
    with pytest.raises(ValueError, match="unsupported kline interval"):
        ReplayFeed(JULY_18, kline_interval="7x")


async def test_feed_writer_fills_the_hot_tables_and_stored_feed_reads_them_back(db):
    events = await replay(ReplayFeed(JULY_18))
    writer = FeedWriter(db, source="replay", batch_size=100)
    open_bar = KlineEvent("BTCUSDT", "1m", dt.datetime(2024, 7, 19, tzinfo=dt.UTC),
                          dt.datetime(2024, 7, 19, 0, 0, 59, 999000, tzinfo=dt.UTC),
                          1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0, 0.0, 0.0, closed=False)
    for event in [*events, open_bar]:
        await writer.write(event)
    results = await writer.flush()
    books = sum(isinstance(e, BookEvent) for e in events)
    assert (results["klines"].inserted, results["book_snapshots"].inserted) == (len(events) - books, books)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*), min(source) FROM book_snapshots")).one() == (books, "replay")
        assert conn.execute(text("SELECT count(*) FROM klines")).scalar() == len(events) - books
    again = FeedWriter(db, source="replay")
    for event in events:
        await again.write(event)
    assert (await again.flush())["book_snapshots"].unchanged == books  # re-written: nothing changes
    stored = StoredFeed(db, ["BTCUSDT", "ETHUSDT"], events[0].time, events[-1].time + dt.timedelta(seconds=1))
    stored.WINDOW = dt.timedelta(minutes=1)  # several windows, so their seams are crossed
    assert [event async for event in stored.events()] == events


async def test_feed_writer_keeps_one_book_per_cadence_slot(db):
    t0 = dt.datetime(2024, 7, 19, tzinfo=dt.UTC)
    books = [BookEvent("BTCUSDT", t0 + dt.timedelta(milliseconds=ms), None, 1000 + ms, 10.0, 1.0, 10.1, 1.0,
                       [10.0], [1.0], [10.1], [1.0]) for ms in (0, 100, 900, 1000, 1100, 2500)]
    writer = FeedWriter(db, source="binance")
    for event in books:
        await writer.write(event)
    assert (await writer.flush())["book_snapshots"].inserted == 3
    with db.engine.connect() as conn:
        update_ids = conn.execute(text("SELECT last_update_id FROM book_snapshots ORDER BY 1")).scalars().all()
    assert update_ids == [1000, 2000, 3500]
