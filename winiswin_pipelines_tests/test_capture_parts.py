"""The capture's parts on their own: raw capture files (and their recovery after a crash), the live
book's gaps, sharding, partitions kept ahead across midnight, the configuration's checks."""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
from pathlib import Path

import pytest

from winiswin_pipelines.coldstore import LocalColdStore, sha256_file
from winiswin_pipelines.db.partitions import existing_partitions
from winiswin_pipelines.marketdata import samples
from winiswin_pipelines.marketdata.binance import shard_streams
from winiswin_pipelines.marketdata.capture import read_capture
from winiswin_pipelines.marketdata.capture_files import (
    CaptureFileWriter,
    complete_members_length,
    recover_partial_files,
)
from winiswin_pipelines.marketdata.live_capture import CaptureConfig, PartitionUpkeep
from winiswin_pipelines.marketdata.livebook import LiveBook, ResumePoint, SyncState
from winiswin_pipelines.marketdata.orderbook import BookSnapshotter

T0 = dt.datetime(2024, 7, 18, 23, 59, 59, tzinfo=dt.UTC)
T0_US = int(T0.timestamp() * 1_000_000)


def _depth(stream: str, first: int, last: int, previous: int, event_ms: int, bid: str = "100.0") -> str:
    return (f'{{"stream":"{stream}","data":{{"e":"depthUpdate","E":{event_ms},"T":{event_ms},"s":"BTCUSDT",'
            f'"U":{first},"u":{last},"pu":{previous},"b":[["{bid}","1.000"]],"a":[["101.0","2.000"]]}}}}')


def test_capture_files_roll_at_utc_midnight_and_read_back_as_captures(tmp_path):
    store = LocalColdStore(tmp_path / "cold")
    writer = CaptureFileWriter(tmp_path / "spool", "capture-2024-07-18-a1", T0, cold_store=store)
    lines = [(T0_US, _depth("btcusdt@depth@100ms", 1, 2, 0, 1_721_347_199_000)),
             (T0_US + 500_000, _depth("btcusdt@depth@100ms", 3, 4, 2, 1_721_347_199_500)),
             (T0_US + 1_500_000, _depth("btcusdt@depth@100ms", 5, 6, 4, 1_721_347_200_500))]  # after midnight
    for stamp, raw in lines:
        writer.write("BTCUSDT", stamp, raw)
    writer.write("ETHUSDT", T0_US, b'{"lastUpdateId":7,"E":1,"T":1,"bids":[],"asks":[]}')
    writer.flush()
    names = writer.close()
    prefix = "market_captures/capture-20240718T235959Z-capture-2024-07-18-a1"
    assert sorted(names) == [f"{prefix}_btcusdt_20240718.gz", f"{prefix}_btcusdt_20240719.gz",
                             f"{prefix}_ethusdt_20240718.gz"]
    assert list((tmp_path / "spool").iterdir()) == []  # verified in the store, then removed
    for name in names:
        assert store.head(name).sha256 == sha256_file(store.root / name)
    found = samples.scan_market_folder(store.root / "market_captures")  # the import recognises them
    assert sorted((c.symbol, c.day) for c in found.captures) == [
        ("BTCUSDT", dt.date(2024, 7, 18)), ("BTCUSDT", dt.date(2024, 7, 19)), ("ETHUSDT", dt.date(2024, 7, 18))]
    btc = [m for c in sorted(found.captures, key=lambda c: c.day) if c.symbol == "BTCUSDT" for m in read_capture(c.path)]
    assert [(m.receive_time, m.data["u"]) for m in btc] == [
        (T0, 2), (T0 + dt.timedelta(seconds=0.5), 4), (T0 + dt.timedelta(seconds=1.5), 6)]
    [snapshot] = read_capture(store.root / names[2])
    assert snapshot.stream == "rest_depth" and snapshot.data["lastUpdateId"] == 7


def test_a_crashed_capture_file_is_cut_at_its_last_complete_member(tmp_path):
    spool = tmp_path / "spool"
    writer = CaptureFileWriter(spool, "crashy", T0)
    writer.write("BTCUSDT", T0_US, _depth("btcusdt@depth@100ms", 1, 2, 0, 1))
    writer.flush()
    writer.write("BTCUSDT", T0_US + 1, _depth("btcusdt@depth@100ms", 3, 4, 2, 2))
    writer.flush()
    [part] = list(spool.iterdir())
    assert part.name.endswith(".gz.part")
    whole = part.stat().st_size
    member = gzip.compress(b"%d %s\n" % (T0_US + 2, _depth("btcusdt@depth@100ms", 5, 6, 4, 3).encode()))
    with part.open("ab") as handle:
        handle.write(member[: len(member) // 2])  # the process died in the middle of a write
    assert complete_members_length(part) == whole
    stored = recover_partial_files(spool, LocalColdStore(tmp_path / "cold"))
    [key] = stored
    assert [m.data["u"] for m in read_capture(tmp_path / "cold" / key)] == [2, 4]
    assert list(spool.iterdir()) == []


def _book_with_snapshot(resume: ResumePoint | None = None) -> LiveBook:
    book = LiveBook("BTCUSDT", resume=resume)
    t = T0
    assert not book.on_diff("btcusdt@depth", _diff(10, 12, 9, 1000), t)  # buffered: no snapshot yet
    assert book.wants_snapshot(0.0)
    book.snapshot_requested()
    assert book.on_snapshot({"lastUpdateId": 11, "bids": [["100.0", "1"]], "asks": [["101.0", "1"]]}, t, 0.0)["u"] == 12
    return book


def _diff(first: int, last: int, previous: int, event_ms: int) -> dict:
    return {"e": "depthUpdate", "E": event_ms, "T": event_ms, "s": "BTCUSDT", "U": first, "u": last, "pu": previous,
            "b": [["100.0", str(last)]], "a": []}


def test_live_book_gaps_one_per_incident():
    book = _book_with_snapshot()
    assert book.state is SyncState.SYNCED and book.take_gap_changes() == []
    assert book.on_diff("btcusdt@depth", _diff(13, 14, 12, 2000), T0)
    book.on_disconnect()  # the connection drops: a reconnect gap opens at the last good update
    [opened] = book.take_gap_changes()
    assert (opened.reason, opened.start_time, opened.end_time) == ("reconnect", _ms(2000), None)
    assert not book.on_diff("btcusdt@depth", _diff(20, 21, 19, 9000), T0)  # and diffs were missed: same incident
    assert book.state is SyncState.WAITING and book.sequence_breaks == 1 and book.gap.details["sequence_breaks"] == 1
    book.snapshot_requested()
    book.on_snapshot({"lastUpdateId": 30, "bids": [], "asks": []}, T0, 0.0)  # older than nothing new: loaded
    assert book.state is SyncState.LOADED
    assert book.on_diff("btcusdt@depth", _diff(29, 31, 28, 9500), T0)  # bridges lastUpdateId 30
    [closed] = book.take_gap_changes()
    assert (closed.reason, closed.start_time, closed.end_time, closed.details["snapshots"]) == (
        "reconnect", _ms(2000), _ms(9500), 1)
    # A break while in sync is a sequence_break; nothing is sampled from the book that missed diffs.
    book.take_rows()
    assert not book.on_diff("btcusdt@depth", _diff(40, 41, 39, 14_000), T0)
    [gap] = book.take_gap_changes()
    assert (gap.reason, gap.start_time, gap.details["expected_pu"], gap.details["pu"]) == (
        "sequence_break", _ms(9500), 31, 39)
    assert book.take_rows() == []  # grid 10..13 s: not written


def test_restart_gap_is_stored_only_when_the_data_continues_the_last_capture():
    continuing = _book_with_snapshot(ResumePoint(_ms(500)))
    [gap] = continuing.take_gap_changes()
    assert (gap.reason, gap.start_time, gap.end_time) == ("restart", _ms(500), _ms(1000))
    replaying_older = _book_with_snapshot(ResumePoint(_ms(5000)))  # data from before the last capture's end
    assert replaying_older.take_gap_changes() == []
    open_one = _book_with_snapshot(ResumePoint(_ms(5000), continues_open_gap=True))  # closes the stored open gap
    [closed] = open_one.take_gap_changes()
    assert closed.end_time == closed.start_time == _ms(5000)
    never_synced = LiveBook("BTCUSDT", resume=ResumePoint(_ms(500)))
    assert never_synced.take_gap_changes() == [] and never_synced.take_gap_changes(including_open=True)[0].is_open


def test_live_book_rows_are_the_snapshotters():
    messages = list(itertools.chain.from_iterable(
        read_capture(f, kinds={"depth", "rest_depth"}) for f in (samples.CAPTURE_BTCUSDT_20230404,)))
    book, snapshotter = LiveBook("BTCUSDT"), BookSnapshotter("BTCUSDT", dt.timedelta(seconds=1), 10)
    for message in messages:
        snapshotter.process(message)
        if message.stream == "rest_depth":
            book.on_snapshot(message.data, message.receive_time, 0.0)
        else:
            book.on_diff(message.stream, message.data, message.receive_time)
    expected = [(r[0], _ms(r[1]), *r[2:]) for r in snapshotter.take_rows()]
    assert book.take_rows() == expected and len(expected) > 90


def _ms(ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)


def test_streams_are_sharded_by_symbol_within_the_limit():
    names = [f"s{i:03d}usdt@{kind}" for i in range(250) for kind in ("depth@100ms", "kline_1m")]
    shards = shard_streams(names, 200)
    assert [len(s) for s in shards] == [200, 200, 100]
    assert all(len({n.split("@")[0] for n in s} & {n.split("@")[0] for n in t}) == 0
               for s, t in itertools.combinations(shards, 2))
    assert len(shard_streams(names[:3], 2)) == 2  # a symbol's two streams never split
    with pytest.raises(ValueError, match="1..1024"):
        shard_streams(names, 2000)
    with pytest.raises(ValueError, match="lower-case symbol"):
        shard_streams(["BTCUSDT@depth"], 10)


def test_partitions_are_kept_ahead_across_midnight(db):
    clock = [dt.datetime(2030, 1, 1, 23, 59, 30, tzinfo=dt.UTC)]
    upkeep = PartitionUpkeep(db, every=dt.timedelta(hours=1), clock=lambda: clock[0])
    assert upkeep.due()
    upkeep.run()
    clock[0] += dt.timedelta(seconds=20)
    assert not upkeep.due()  # same day, less than an hour later
    clock[0] += dt.timedelta(seconds=20)  # 00:00:10 the next day
    assert upkeep.due()
    upkeep.run()
    clock[0] += dt.timedelta(minutes=61)
    assert upkeep.due() and upkeep.runs == 2
    with db.engine.connect() as conn:
        days = existing_partitions(conn, "book_snapshots")
    today = dt.datetime.now(dt.UTC).date()
    assert {today + dt.timedelta(days=n) for n in range(-1, 8)} <= set(days)


@pytest.mark.parametrize(("change", "message"), [
    ({"symbols": ()}, "at least one symbol"),
    ({"kline_interval": "7x"}, "unsupported kline interval"),
    ({"depth_stream": "trade"}, "depth_stream"),
    ({"snapshot_limit": 200}, "snapshot_limit"),
    ({"flush_seconds": 0}, "positive"),
])
def test_capture_config_refuses_what_binance_would(change, message):
    with pytest.raises(ValueError, match=message):
        CaptureConfig(**{"symbols": ("BTCUSDT",), **change})
    assert CaptureConfig((" btcusdt", "BTCUSDT", "ethusdt")).symbols == ("BTCUSDT", "ETHUSDT")


def test_capture_stream_names(tmp_path: Path):
    config = CaptureConfig(("BTCUSDT",), raw_capture_dir=tmp_path)
    assert config.stream_names() == ["btcusdt@kline_1m", "btcusdt@depth@100ms"]
