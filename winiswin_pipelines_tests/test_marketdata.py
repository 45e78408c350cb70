"""Pure market-data readers on the bundled real Binance captures and klines."""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
from pathlib import Path

import pandas as pd
import pytest

from winiswin_pipelines.marketdata import samples
from winiswin_pipelines.marketdata.capture import (
    REST_DEPTH,
    CaptureFormatError,
    CaptureMessage,
    RejectedLine,
    read_capture,
)
from winiswin_pipelines.marketdata.klines import (
    KLINE_COLUMNS,
    KlineCsvError,
    aggregate_trades_to_klines,
    complete_klines,
    complete_klines_from_trades,
    klines_without_lost_trades,
    read_kline_csv,
    trades_from_capture,
)
from winiswin_pipelines.marketdata.orderbook import (
    BOOK_SNAPSHOT_COLUMNS,
    BookSnapshotter,
    DiffResult,
    OrderBook,
    rebuild_book_snapshots,
)

UTC = dt.UTC
CAPTURES_2023 = [samples.CAPTURE_BTCUSDT_20230404, samples.CAPTURE_BTCUSDT_20230405]
CAPTURES_2024 = [samples.CAPTURE_BTCUSDT_20240718, samples.CAPTURE_BTCUSDT_20240719]


def _messages(paths: list[Path], kinds: set[str] | None = None) -> list[CaptureMessage]:
    return list(itertools.chain.from_iterable(read_capture(path, kinds=kinds) for path in paths))


@pytest.fixture(scope="module")
def capture_2023() -> list[CaptureMessage]:
    return _messages(CAPTURES_2023)


def _ticker_bbo(data: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    return (float(data["b"]), float(data["B"])), (float(data["a"]), float(data["A"]))


def _bbo_checks(messages: list[CaptureMessage]) -> tuple[int, int]:
    """(matches, mismatches) of the rebuilt book's BBO against bookTicker at the same update id."""
    tickers = {m.data["u"]: m.data for m in messages if m.kind == "bookTicker"}
    book, matches, mismatches = OrderBook(), 0, 0
    for message in messages:
        if message.stream == REST_DEPTH:
            book.apply_snapshot(message.data)
        elif message.kind == "depth":
            assert book.apply_diff(message.data) is not DiffResult.GAP
            ticker = tickers.get(message.data["u"])
            if ticker is not None and book.is_valid:
                if (book.best_bid(), book.best_ask()) == _ticker_bbo(ticker):
                    matches += 1
                else:
                    mismatches += 1
    return matches, mismatches


def test_capture_reader_sniffs_micro_and_nanosecond_stamps() -> None:
    first_2023 = next(read_capture(samples.CAPTURE_BTCUSDT_20230404))
    assert first_2023.receive_time == dt.datetime(2023, 4, 4, 23, 58, 20, 423575, tzinfo=UTC)
    assert first_2023.stream == "btcusdt@bookTicker" and first_2023.kind == "bookTicker"
    first_2024 = next(read_capture(samples.CAPTURE_BTCUSDT_20240718))
    assert first_2024.receive_time == dt.datetime(2024, 7, 18, 23, 57, 0, 984480, tzinfo=UTC)
    snapshots = list(read_capture(samples.CAPTURE_BTCUSDT_20230404, kinds={REST_DEPTH}))
    assert len(snapshots) == 1 and snapshots[0].data["lastUpdateId"] == 2710246765483
    assert len(snapshots[0].data["bids"]) == 1000


def test_capture_reader_plain_text_raw_events_and_bad_lines(tmp_path: Path) -> None:
    with gzip.open(samples.CAPTURE_BTCUSDT_20230405, "rb") as handle:
        lines = list(itertools.islice(handle, 200))
    plain = tmp_path / "btcusdt_20230405.txt"
    plain.write_bytes(b"".join(lines))
    from_gzip = itertools.islice(read_capture(samples.CAPTURE_BTCUSDT_20230405), 200)
    assert [m.data for m in read_capture(plain)] == [m.data for m in from_gzip]
    raw = tmp_path / "raw.txt"
    event = '{"e":"trade","E":1,"T":1,"s":"BTCUSDT","t":7,"p":"1.0","q":"2","X":"MARKET","m":true}'
    raw.write_text(f"1680652800091 {event}\n")
    [message] = read_capture(raw)
    assert message.stream == "btcusdt@trade"
    assert message.receive_time == dt.datetime(2023, 4, 5, 0, 0, 0, 91000, tzinfo=UTC)  # milliseconds
    raw.write_text(raw.read_text() + "\n1680652800091 {not json\n" + raw.read_text() + "1680652800092\n")
    with pytest.raises(CaptureFormatError, match=r"raw.txt:3: not '<timestamp> <json>'"):
        list(read_capture(raw))
    rejected: list[RejectedLine] = []
    assert len(list(read_capture(raw, rejected=rejected))) == 2
    assert [(r.line_number, r.text) for r in rejected] == [(3, b"1680652800091 {not json"), (5, b"1680652800092")]


@pytest.mark.parametrize("paths", [CAPTURES_2023, CAPTURES_2024], ids=["2023-04-05 µs", "2024-07-19 ns"])
def test_rebuilt_book_bbo_equals_book_ticker_at_the_same_update_id(paths: list[Path]) -> None:
    matches, mismatches = _bbo_checks(_messages(paths, {"depth", REST_DEPTH, "bookTicker"}))
    assert mismatches == 0
    assert matches > 500


def diff(first: int, last: int, previous: int, b: list | None = None, a: list | None = None) -> dict:
    """A hand-made depthUpdate event."""
    return {"E": last, "U": first, "u": last, "pu": previous, "b": b or [], "a": a or []}


def test_futures_sequencing_rules_on_hand_made_updates() -> None:
    book = OrderBook()
    assert book.apply_diff(diff(90, 95, 89)) is DiffResult.BUFFERED
    snapshot = {"lastUpdateId": 100, "bids": [["10.0", "1"], ["9.5", "2"]], "asks": [["10.5", "3"]]}
    replayed = book.apply_snapshot(snapshot)
    assert [result for _, result in replayed] == [DiffResult.STALE]
    assert not book.is_valid
    assert book.apply_diff(diff(96, 105, 95, b=[["10.0", "0"], ["9.9", "4"]])) is DiffResult.SYNCED
    assert book.is_valid and book.best_bid() == (9.9, 4.0) and book.best_ask() == (10.5, 3.0)
    assert book.apply_diff(diff(106, 110, 105, a=[["10.4", "1"]])) is DiffResult.APPLIED
    assert book.top(5).ask_prices == [10.4, 10.5] and book.top(5).bid_prices == [9.9, 9.5]
    # A late snapshot older than the synced book is ignored.
    assert book.apply_snapshot({"lastUpdateId": 108, "bids": [], "asks": []}) == [] and book.is_valid
    assert book.best_bid() == (9.9, 4.0)
    assert book.apply_diff(diff(112, 115, 111)) is DiffResult.GAP  # pu must be 110
    assert not book.is_valid and book.last_update_id == 110
    # A snapshot whose bridging diff never comes is unusable as well.
    book.apply_snapshot({"lastUpdateId": 200, "bids": [["1", "1"]], "asks": [["2", "1"]]})
    assert book.apply_diff(diff(201, 205, 200)) is DiffResult.GAP


def _full_book_snapshot(book: OrderBook) -> dict:
    levels = book.top(10**9)
    return {
        "lastUpdateId": book.last_update_id,
        "bids": [[str(p), str(q)] for p, q in zip(levels.bid_prices, levels.bid_sizes, strict=True)],
        "asks": [[str(p), str(q)] for p, q in zip(levels.ask_prices, levels.ask_sizes, strict=True)],
    }


def test_planted_gap_marks_the_book_invalid_until_the_next_snapshot(capture_2023: list[CaptureMessage]) -> None:
    depth = [m for m in capture_2023 if m.kind == "depth" or m.stream == REST_DEPTH]
    diffs = [i for i, m in enumerate(depth) if m.kind == "depth"]
    dropped, resnapshot_at = diffs[3000], diffs[3050]
    reference = OrderBook()
    for message in depth[: resnapshot_at + 1]:
        reference.apply_snapshot(message.data) if message.stream == REST_DEPTH else reference.apply_diff(message.data)
    # The snapshot arrives after a few more diffs, as a late REST response would (they are buffered).
    snapshot = CaptureMessage(depth[resnapshot_at + 5].receive_time, REST_DEPTH, _full_book_snapshot(reference))
    planted = depth[:dropped] + depth[dropped + 1 : resnapshot_at + 5] + [snapshot] + depth[resnapshot_at + 5 :]

    snapshotter = BookSnapshotter("BTCUSDT", dt.timedelta(milliseconds=100), depth=5)
    for message in planted:
        snapshotter.process(message)
    frame = snapshotter.frame()

    [gap] = snapshotter.gaps
    assert gap.expected_pu == depth[dropped].data["pu"] and gap.pu == depth[dropped].data["u"]
    assert gap.first_update_id == depth[dropped + 1].data["U"]
    period = snapshotter.invalid_periods[-1]
    assert period.reason == "gap"
    # Invalid from the last diff known good (the lost one's time is unknown) until the book synced again.
    assert period.start == dt.datetime.fromtimestamp(depth[dropped - 1].data["E"] / 1000, UTC) < gap.exchange_time
    assert period.end == dt.datetime.fromtimestamp(depth[resnapshot_at].data["E"] / 1000, UTC)
    assert period.start < period.end
    inside = frame[(frame["exchange_time"] >= period.start) & (frame["exchange_time"] < period.end)]
    assert inside.empty
    after = frame[frame["exchange_time"] >= period.end]
    assert len(after) > 100 and frame["exchange_time"].is_monotonic_increasing
    # Every row written, before the gap and after it, is exactly the unbroken book's.
    unbroken = rebuild_book_snapshots(depth, symbol="BTCUSDT", cadence=dt.timedelta(milliseconds=100), depth=5)
    merged = frame.merge(unbroken, on="exchange_time", suffixes=("", "_ref"))
    assert len(merged) == len(frame)
    for column in ("last_update_id", "best_bid", "best_ask", "bid_prices", "ask_sizes"):
        assert merged[column].tolist() == merged[f"{column}_ref"].tolist()


def test_snapshots_sample_the_book_on_an_exchange_time_grid(capture_2023: list[CaptureMessage]) -> None:
    cadence = dt.timedelta(seconds=1)
    frame = rebuild_book_snapshots(capture_2023, symbol="btcusdt", cadence=cadence, depth=10, source="test")
    assert list(frame.columns) == list(BOOK_SNAPSHOT_COLUMNS)
    assert str(frame["exchange_time"].dt.tz) == "UTC" and str(frame["receive_time"].dt.tz) == "UTC"
    assert (frame["exchange_time"].astype("int64") % 1_000_000 == 0).all()  # whole seconds (µs units)
    assert frame["exchange_time"].diff().dropna().eq(pd.Timedelta(cadence)).all()
    assert frame["exchange_time"].iloc[0] == pd.Timestamp("2023-04-04 23:58:21", tz="UTC")
    assert frame["exchange_time"].iloc[-1] >= pd.Timestamp("2023-04-05 00:06:50", tz="UTC")
    assert (frame["best_bid"] < frame["best_ask"]).all()
    assert (frame["bid_prices"].map(len) == 10).all()
    assert (frame["best_bid"] == frame["bid_prices"].str[0]).all()
    # Each row is the book after every diff with event time E <= its grid time, replayed independently.
    depth = [m for m in capture_2023 if m.kind == "depth" or m.stream == REST_DEPTH]
    for row in frame.iloc[[0, 37, 250, len(frame) - 1]].itertuples():
        grid_ms = row.exchange_time.value // 10**6
        book, last_receive = OrderBook(), None
        for message in depth:
            if message.stream == REST_DEPTH:
                book.apply_snapshot(message.data)
            elif message.data["E"] <= grid_ms:
                book.apply_diff(message.data)
                last_receive = message.receive_time
        assert (row.last_update_id, row.best_bid, row.best_ask_qty) == (
            book.last_update_id, book.best_bid()[0], book.best_ask()[1]
        )
        assert row.bid_sizes == book.top(10).bid_sizes and row.receive_time == last_receive


def test_bars_from_captured_trades_equal_binance_klines(capture_2023: list[CaptureMessage]) -> None:
    trades = trades_from_capture(capture_2023)
    assert (trades["trade_type"] == "INSURANCE_FUND").sum() == 1
    bars = aggregate_trades_to_klines(trades, symbol="BTCUSDT", interval="5m")
    official = read_kline_csv(samples.BTCUSDT_5M_2023_04_CSV, symbol="BTCUSDT", interval="5m")
    bar_open = pd.Timestamp("2023-04-05 00:00", tz="UTC")
    ours = bars[bars["open_time"] == bar_open].iloc[0]
    theirs = official[official["open_time"] == bar_open].iloc[0]
    for column in KLINE_COLUMNS:
        if column != "source":
            assert ours[column] == theirs[column], column
    assert (ours["open"], ours["trade_count"], ours["quote_volume"]) == (28155.1, 8056, 19288714.9508)


def test_trade_aggregation_on_hand_worked_trades() -> None:
    t0 = pd.Timestamp("2024-01-01 00:00", tz="UTC")
    trades = pd.DataFrame({
        "symbol": "ETHUSDT",
        "trade_id": [1, 2, 3, 4, 5],
        "trade_time": [t0 + pd.Timedelta(seconds=s) for s in (1, 1, 30, 59, 185)],
        "price": [100.1, 100.3, 99.9, 100.0, 101.2],
        "quantity": [0.1, 0.2, 0.3, 5.0, 0.7],
        "is_buyer_maker": [False, True, False, False, True],
        "trade_type": ["MARKET", "MARKET", "MARKET", "ADL", "MARKET"],
        "trade_count": [1, 3, 1, 1, 1],
    })
    bars = aggregate_trades_to_klines(trades, symbol="ETHUSDT", interval="1m")
    assert bars["open_time"].tolist() == [t0 + pd.Timedelta(minutes=m) for m in range(4)]
    first = bars.iloc[0]
    assert (first["open"], first["high"], first["low"], first["close"]) == (100.1, 100.3, 99.9, 99.9)
    assert (first["volume"], first["trade_count"]) == (0.6, 5)  # the ADL fill is not a market trade
    assert first["quote_volume"] == 60.04 and first["taker_buy_base_volume"] == 0.4
    assert first["taker_buy_quote_volume"] == 39.98
    quiet = bars.iloc[1]  # no trades: Binance publishes a flat bar at the previous close
    assert (quiet["open"], quiet["high"], quiet["low"], quiet["close"], quiet["volume"], quiet["trade_count"]) == (
        99.9, 99.9, 99.9, 99.9, 0.0, 0
    )
    assert bars.iloc[3]["close_time"] == t0 + pd.Timedelta(minutes=4) - pd.Timedelta(milliseconds=1)


def test_kline_csv_with_and_without_header(tmp_path: Path) -> None:
    lines = samples.BTCUSDT_5M_2023_04_CSV.read_text().splitlines()
    with_header = read_kline_csv(samples.BTCUSDT_5M_2023_04_CSV, symbol="BTCUSDT", interval="5m")
    assert len(with_header) == 8352 and list(with_header.columns) == list(KLINE_COLUMNS)
    assert with_header["open_time"].iloc[0] == pd.Timestamp("2023-04-01", tz="UTC")
    headerless = tmp_path / "BTCUSDT-5m-2023-04.csv"
    headerless.write_text("\n".join(lines[1:]) + "\n")
    without = read_kline_csv(headerless, symbol="BTCUSDT", interval="5m")
    pd.testing.assert_frame_equal(without.drop(columns="source"), with_header.drop(columns="source"))
    # Newer Binance files stamp times in microseconds.
    micro = tmp_path / "micro.csv"
    micro.write_text("\n".join(",".join(f"{v}000" if i in (0, 6) else v for i, v in enumerate(line.split(",")))
                               for line in lines[1:4]))
    from_micro = read_kline_csv(micro, symbol="BTCUSDT", interval="5m")
    assert from_micro["close_time"].tolist() == with_header["close_time"][:3].tolist()


def test_kline_csv_errors_name_the_file_and_line(tmp_path: Path) -> None:
    lines = samples.BTCUSDT_5M_2023_04_CSV.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([lines[0], lines[1], lines[2].replace("28442.50", "n/a", 1)]))
    with pytest.raises(KlineCsvError, match=r"bad.csv:3: column 'open'"):
        read_kline_csv(bad, symbol="BTCUSDT", interval="5m")
    bad.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines[1:3]))
    with pytest.raises(KlineCsvError, match="expected 12 columns, found 11"):
        read_kline_csv(bad, symbol="BTCUSDT", interval="5m")


def test_bundled_samples_are_recognised_by_name() -> None:
    files = samples.scan_market_folder(samples.MARKET_SAMPLES_DIR)
    [kline_file] = files.klines
    assert (kline_file.symbol, kline_file.interval, kline_file.first_day, kline_file.last_day) == (
        "BTCUSDT", "5m", dt.date(2023, 4, 1), dt.date(2023, 4, 30)
    )
    assert {(c.symbol, c.day) for c in files.captures} == {
        ("BTCUSDT", dt.date(2023, 4, 4)), ("BTCUSDT", dt.date(2023, 4, 5)),
        ("BTCUSDT", dt.date(2024, 7, 18)), ("BTCUSDT", dt.date(2024, 7, 19)),
        ("ETHUSDT", dt.date(2024, 7, 18)), ("ETHUSDT", dt.date(2024, 7, 19)),
    }
    assert all(c.path.exists() for c in files.captures)


def _minutes_from(midnight: pd.Timestamp, *offsets: int) -> list[pd.Timestamp]:
    return [midnight + pd.Timedelta(minutes=m) for m in offsets]


def test_only_bars_the_capture_covers_without_a_lost_trade_are_complete(capture_2023: list[CaptureMessage]) -> None:
    midnight = pd.Timestamp("2023-04-05", tz="UTC")
    trades = trades_from_capture(capture_2023)
    bars = aggregate_trades_to_klines(trades, symbol="BTCUSDT", interval="1m")
    assert bars["open_time"].tolist() == _minutes_from(midnight, *range(-2, 7))
    # The capture starts at 23:58:20 and ends at 00:06:54: those two minutes are partial.
    complete = complete_klines(bars, trades["trade_time"].min(), trades["trade_time"].max())
    assert complete["open_time"].tolist() == _minutes_from(midnight, *range(-1, 6))
    assert klines_without_lost_trades(complete, trades).equals(complete)
    assert complete_klines_from_trades(trades, symbol="BTCUSDT", interval="1m").equals(complete)
    lost = trades[trades["trade_time"] >= midnight + pd.Timedelta(minutes=2, seconds=30)].index[0]
    without_one = trades.drop(index=lost)
    rebuilt = aggregate_trades_to_klines(without_one, symbol="BTCUSDT", interval="1m")
    rebuilt = klines_without_lost_trades(rebuilt[rebuilt["open_time"].isin(complete["open_time"])], without_one)
    assert rebuilt["open_time"].tolist() == _minutes_from(midnight, -1, 0, 1, 3, 4, 5)


def test_snapshot_grid_on_hand_made_updates() -> None:
    def message(at_ms: int, data: dict, stream: str = "btcusdt@depth@0ms") -> CaptureMessage:
        return CaptureMessage(dt.datetime.fromtimestamp(at_ms / 1000, UTC), stream, data)

    def update(first: int, last: int, previous: int, event_ms: int, bid: str) -> CaptureMessage:
        return message(event_ms + 5, diff(first, last, previous, b=[[bid, "1"]]) | {"E": event_ms})

    snapshot = {"lastUpdateId": 10, "bids": [["99", "1"]], "asks": [["101", "1"]]}
    snapshotter = BookSnapshotter("BTCUSDT", dt.timedelta(seconds=1), depth=2)
    for item in [
        update(8, 12, 7, 1_000_400, "99.5"),  # received before the snapshot: buffered, then bridges it
        message(1_000_600, snapshot, REST_DEPTH),
        update(13, 14, 12, 1_001_000, "99.6"),  # exactly on a grid time: part of that snapshot
        update(15, 16, 14, 1_003_200, "99.7"),  # grid times 1_001_000 .. 1_003_000 are emitted here
        update(18, 19, 17, 1_003_900, "99.8"),  # gap (pu 17 != 16): invalid before grid time 1_004_000
        update(20, 21, 19, 1_005_100, "99.9"),
    ]:
        snapshotter.process(item)
    frame = snapshotter.frame()
    assert frame["exchange_time"].tolist() == [
        pd.Timestamp(ms, unit="ms", tz="UTC") for ms in (1_001_000, 1_002_000, 1_003_000)
    ]
    assert frame["last_update_id"].tolist() == [14, 14, 14]
    assert frame["bid_prices"].tolist() == [[99.6, 99.5]] * 3
    assert frame["receive_time"].iloc[0] == dt.datetime.fromtimestamp(1_001.005, UTC)
    assert len(snapshotter.gaps) == 1 and snapshotter.invalid_periods[-1].end is None
