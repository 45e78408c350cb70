"""UnifiedTradeRecorder on a real PostgreSQL: pairing by trade_uid, entry times, orphans, replays."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text

from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.db.models import TradeStatus
from winiswin_pipelines.trading.events import (
    TradeCancelled,
    TradeClosed,
    TradeEvent,
    TradeOpened,
    TradePartiallyClosed,
)
from winiswin_pipelines.trading.recorder import Spool, SpoolLockedError, UnifiedTradeRecorder

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
T0 = dt.datetime(2024, 7, 19, tzinfo=dt.UTC)


def event_stream(pairs: int) -> list[TradeEvent]:
    """Two overlapping positions per symbol at a time (LONG a, SHORT b), closed in crossed order.

    The last pair of each symbol leaves its LONG open, so position_entry_times is not empty.
    """
    events: list[TradeEvent] = []
    for k in range(pairs):
        symbol, start, price = SYMBOLS[k % len(SYMBOLS)], T0 + dt.timedelta(minutes=k), 100.0 + k * 1.25
        a, b = f"trade-{k}-a", f"trade-{k}-b"
        events += [
            TradeOpened(a, symbol, "LONG", start, price, 2.0, leverage=3.0, strategy="test", confidence=0.6,
                        features={"k": k, "obi": 0.25}),
            TradeOpened(b, symbol, "SHORT", start + dt.timedelta(seconds=10), price + 0.5, 1.0),
            TradePartiallyClosed(f"{a}-p1", a, symbol, start + dt.timedelta(seconds=20), price + 1, 1.0, pnl=1.0),
            TradeClosed(b, symbol, start + dt.timedelta(seconds=30), price - 0.5, pnl=1.0, pnl_pct=0.01,
                        exit_reason="tp"),
        ]
        if k < pairs - len(SYMBOLS):
            events.append(TradeClosed(a, symbol, start + dt.timedelta(seconds=40), price + 2, pnl=3.0,
                                      pnl_pct=0.015, fees=0.1, exit_reason="time_stop"))
    return events


async def record(recorder: UnifiedTradeRecorder, event: TradeEvent) -> None:
    method = {TradeOpened: recorder.record_entry, TradePartiallyClosed: recorder.record_partial_exit,
              TradeClosed: recorder.record_exit, TradeCancelled: recorder.record_cancel}[type(event)]
    await method(event)


def _present(event: TradeEvent, trades: dict, partials: dict) -> bool:
    if isinstance(event, TradeOpened):
        row = trades.get(event.trade_uid)
        return row is not None and (row.side, row.entry_time, row.entry_price, row.quantity) == (
            event.side, event.entry_time, event.entry_price, event.quantity)
    if isinstance(event, TradePartiallyClosed):
        row = partials.get(event.exit_uid)
        return row is not None and (row.trade_uid, row.exit_price, row.quantity, row.pnl) == (
            event.trade_uid, event.exit_price, event.quantity, event.pnl)
    row = trades.get(event.trade_uid)
    return row is not None and (row.status, row.exit_time, row.exit_price, row.pnl, row.exit_reason) == (
        event.status, event.exit_time, event.exit_price, event.pnl, event.exit_reason)


def assert_prefix_recorded(manager: DatabaseManager, events: list[TradeEvent], source: str) -> int:
    """The database holds exactly the first m events (no gap, nothing else, nothing twice); returns m."""
    with manager.engine.connect() as conn:
        trades = {r.trade_uid: r for r in conn.execute(text("SELECT * FROM trades"))}
        partials = {r.exit_uid: r for r in conn.execute(text("SELECT * FROM trade_partial_exits"))}
        entry_times = dict(conn.execute(text("SELECT symbol, entry_time FROM position_entry_times")).all())
    present = [_present(event, trades, partials) for event in events]
    m = present.index(False) if False in present else len(present)
    assert not any(present[m:]), f"records after the first missing one (#{m}) were written: order broken"
    recorded = events[:m]
    assert set(trades) == {e.trade_uid for e in recorded if isinstance(e, TradeOpened)}
    assert set(partials) == {e.exit_uid for e in recorded if isinstance(e, TradePartiallyClosed)}
    assert {row.source for row in trades.values()} <= {source}
    closed = {e.trade_uid for e in recorded if isinstance(e, TradeClosed)}
    assert {uid for uid, row in trades.items() if row.status == TradeStatus.OPEN} == set(trades) - closed
    expected_times: dict[str, dt.datetime] = {}  # only live trading keeps position entry times
    for event in recorded if source == "live" else ():
        if isinstance(event, TradeOpened) and event.trade_uid not in closed:
            expected_times[event.symbol] = min(expected_times.get(event.symbol, event.entry_time), event.entry_time)
    assert entry_times == expected_times
    return m


@pytest_asyncio.fixture(loop_scope="function")
async def recorder_factory(db: DatabaseManager, tmp_path: Path):
    made: list[UnifiedTradeRecorder] = []

    def make(**options) -> UnifiedTradeRecorder:
        options = {"source": "live", "spool_dir": tmp_path / "spool", "batch_size": 40, "flush_interval": 0.02,
                   **options}
        made.append(UnifiedTradeRecorder(db, **options))
        return made[-1]

    yield make
    for recorder in made:
        await recorder.close()
    await db.async_engine.dispose()  # on the test's event loop, where its connections live


async def test_two_positions_on_one_symbol_pair_by_trade_uid_and_keep_entry_times(db, recorder_factory):
    recorder = recorder_factory()
    await recorder.start()
    events = event_stream(12)
    for event in events:
        await record(recorder, event)
    await recorder.flush()
    assert assert_prefix_recorded(db, events, "live") == len(events)
    with db.engine.connect() as conn:
        long_pair = conn.execute(text(
            "SELECT t.pnl, t.fees, p.pnl AS partial_pnl FROM trades t JOIN trade_partial_exits p USING (trade_uid) "
            "WHERE t.trade_uid = 'trade-0-a'")).one()
    assert (long_pair.pnl, long_pair.fees, long_pair.partial_pnl) == (3.0, 0.1, 1.0)
    metrics = recorder.metrics()
    assert (metrics["queued"], metrics["written"], metrics["spooled"], metrics["rejected"]) == (len(events),) * 2 + (0, 0)
    assert metrics["write_latency_p99_ms"] >= metrics["write_latency_p50_ms"] > 0
    # Closing the last LONG of a symbol (the other position there is already closed) deletes its entry time.
    last_long = next(e for e in reversed(events) if isinstance(e, TradeOpened) and e.symbol == "BTCUSDT"
                     and e.side == "LONG")
    await recorder.record_exit(TradeClosed(last_long.trade_uid, "BTCUSDT", T0 + dt.timedelta(hours=3), 90.0,
                                           pnl=-1.0, pnl_pct=-0.01))
    await recorder.close()
    with db.engine.connect() as conn:
        symbols = set(conn.execute(text("SELECT symbol FROM position_entry_times")).scalars())
    assert symbols == {"ETHUSDT", "SOLUSDT"}


async def test_second_position_keeps_entry_time_when_the_first_closes(db, recorder_factory):
    recorder = recorder_factory(batch_size=1)
    await recorder.start()
    first = TradeOpened("first", "BTCUSDT", "LONG", T0, 100.0, 1.0)
    second = TradeOpened("second", "BTCUSDT", "SHORT", T0 + dt.timedelta(minutes=5), 101.0, 1.0)
    for event in (first, second, TradeClosed("first", "BTCUSDT", T0 + dt.timedelta(minutes=9), 102.0, 2.0, 0.02)):
        await record(recorder, event)
        await recorder.flush()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT entry_time FROM position_entry_times WHERE symbol = 'BTCUSDT'")).scalar() \
            == second.entry_time
        statuses = dict(conn.execute(text("SELECT trade_uid, status FROM trades")).all())
    assert statuses == {"first": TradeStatus.CLOSED, "second": TradeStatus.OPEN}
    await recorder.record_cancel(TradeCancelled("second", "BTCUSDT", T0 + dt.timedelta(minutes=10), "not filled"))
    await recorder.close()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM position_entry_times")).scalar() == 0
        assert conn.execute(text("SELECT status, exit_reason FROM trades WHERE trade_uid = 'second'")).one() \
            == (TradeStatus.CANCELLED, "not filled")


async def test_exit_of_unknown_entry_is_kept_and_attached_when_the_entry_arrives(db, recorder_factory):
    recorder = recorder_factory()
    await recorder.start()
    await recorder.record_partial_exit(TradePartiallyClosed("late-p1", "late", "ETHUSDT", T0, 3400.0, 0.5, pnl=5.0))
    await recorder.record_exit(TradeClosed("late", "ETHUSDT", T0 + dt.timedelta(minutes=1), 3410.0, 15.0, 0.004))
    await recorder.flush()
    with db.engine.connect() as conn:
        orphans = conn.execute(text(
            "SELECT exit_uid, raw->>'trade_uid' FROM trade_partial_exits WHERE trade_uid IS NULL ORDER BY exit_uid"
        )).all()
        assert conn.execute(text("SELECT count(*) FROM trades")).scalar() == 0
    assert orphans == [("late-p1", "late"), ("late:close", "late")]
    assert recorder.metrics()["orphans"] == 2
    await recorder.record_entry(TradeOpened("late", "ETHUSDT", "LONG", T0 - dt.timedelta(hours=1), 3380.0, 1.0))
    await recorder.close()
    with db.engine.connect() as conn:
        trade = conn.execute(text("SELECT status, exit_price, pnl FROM trades WHERE trade_uid = 'late'")).one()
        partials = conn.execute(text("SELECT exit_uid, trade_uid FROM trade_partial_exits")).all()
        assert conn.execute(text("SELECT count(*) FROM position_entry_times")).scalar() == 0
    assert tuple(trade) == (TradeStatus.CLOSED, 3410.0, 15.0)
    assert partials == [("late-p1", "late")]


async def test_replayed_spool_changes_nothing(db, recorder_factory, tmp_path):
    events = event_stream(9)
    recorder = recorder_factory()
    await recorder.start()
    for event in events:
        await record(recorder, event)
    await recorder.close()
    dump = "SELECT to_jsonb(x) FROM {} x ORDER BY 1"
    with db.engine.connect() as conn:
        before = {t: conn.execute(text(dump.format(t))).scalars().all()
                  for t in ("trades", "trade_partial_exits", "position_entry_times")}
    # A process died after its commit and before deleting its segment, in a lane of its own: the
    # next recorder adopts that lane's segments and the whole stream is replayed.
    spool = Spool(tmp_path / "spool" / "lane-3")
    spool.append([event.to_record() for event in events])
    spool.close()
    again = recorder_factory()
    await again.start()
    assert again.metrics()["spool_pending"] == 0
    await again.close()
    with db.engine.connect() as conn:
        after = {t: conn.execute(text(dump.format(t))).scalars().all() for t in before}
    assert after == before
    assert assert_prefix_recorded(db, events, "live") == len(events)


async def test_bad_records_are_rejected_with_a_reason_and_the_rest_written(db, recorder_factory, tmp_path):
    good = [TradeOpened(f"ok-{i}", "BTCUSDT", "LONG", T0, 100.0, 1.0) for i in range(2)]
    refused = TradeOpened("nul-byte", "BTCUSDT", "LONG", T0, 100.0, 1.0, features={"note": "a\x00b"})
    lane = tmp_path / "spool" / "lane-0"
    spool = Spool(lane)
    spool.append([good[0].to_record(), {"kind": "open", "trade_uid": "no-symbol"}])
    spool.close()
    with open(lane / "segment-000000000001.jsonl", "a") as handle:
        handle.write('{"kind": "open", "trade_uid": "torn')  # a crash in the middle of an append
    recorder = recorder_factory()
    await recorder.start()
    for event in (good[1], refused):
        await recorder.record_entry(event)
    await recorder.close()
    with db.engine.connect() as conn:
        assert set(conn.execute(text("SELECT trade_uid FROM trades")).scalars()) == {"ok-0", "ok-1"}
    rejected = [json.loads(line) for line in (lane / "rejected.jsonl").read_text().splitlines()]
    assert [entry["raw"]["trade_uid"] for entry in rejected] == ["no-symbol", "nul-byte"]
    assert "symbol" in rejected[0]["reason"] and rejected[0]["where"] == "segment-000000000001.jsonl:2"
    assert "DataError" in rejected[1]["reason"] or "UntranslatableCharacter" in rejected[1]["reason"]
    assert recorder.metrics()["rejected"] == 2


async def test_wrong_calls_fail_loudly(recorder_factory):
    recorder = recorder_factory()
    await recorder.start()
    with pytest.raises(TypeError, match="expected a TradeOpened, got dict"):
        await recorder.record_entry({"symbol": "BTCUSDT"})
    with pytest.raises(TypeError, match="expected a TradeClosed, got TradeOpened"):
        await recorder.record_exit(TradeOpened("x", "BTCUSDT", "LONG", T0, 1.0, 1.0))
    with pytest.raises(ValueError, match="TradeOpened 'x': entry_time must be a timezone-aware datetime"):
        TradeOpened("x", "BTCUSDT", "LONG", dt.datetime(2024, 1, 1), 1.0, 1.0)
    with pytest.raises(ValueError, match="side must be one of"):
        TradeOpened("x", "BTCUSDT", "BUY", T0, 1.0, 1.0)
    with pytest.raises(ValueError, match="symbol must be a Binance symbol"):
        TradeOpened("x", "BTC/USDT", "LONG", T0, 1.0, 1.0)
    with pytest.raises(SpoolLockedError):
        Spool(recorder.spool_dir / "lane-0")
    await recorder.close()
    with pytest.raises(RuntimeError, match="closed"):
        await recorder.record_entry(TradeOpened("x", "BTCUSDT", "LONG", T0, 1.0, 1.0))


@pytest.mark.parametrize("source", ["paper", "backtest"])
async def test_only_live_writes_entry_times(db, recorder_factory, source):
    recorder = recorder_factory(source=source)
    await recorder.start()
    await recorder.record_entry(TradeOpened("sim-1", "BTCUSDT", "LONG", T0, 100.0, 1.0))
    await recorder.close()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT source, entry_time FROM trades")).one() == (source, T0)  # kept on the trade
        assert conn.execute(text("SELECT count(*) FROM position_entry_times")).scalar() == 0


async def test_recorders_of_one_source_run_side_by_side_in_their_own_lanes(db, recorder_factory):
    first, second = recorder_factory(source="backtest"), recorder_factory(source="backtest")
    await first.start()
    await second.start()
    assert [r._spool.directory.name for r in (first, second)] == ["lane-0", "lane-1"]
    await first.record_entry(TradeOpened("day-1", "BTCUSDT", "LONG", T0, 100.0, 1.0))
    await second.record_entry(TradeOpened("day-2", "BTCUSDT", "LONG", T0 + dt.timedelta(days=1), 100.0, 1.0))
    await first.close()
    await second.close()
    with db.engine.connect() as conn:
        assert set(conn.execute(text("SELECT trade_uid FROM trades")).scalars()) == {"day-1", "day-2"}
