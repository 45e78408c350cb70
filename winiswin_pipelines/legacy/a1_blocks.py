"""Variant A1 JSON lines normalised a block at a time with Arrow: the per-record path's rows, faster.

The A1 era's trades.jsonl holds one machine-written 39-key record per line (legacy-system.md §2.1).
Record by record, Python spends ~30 µs on each; here a block of lines is parsed by Arrow's JSON
reader and normalised with Arrow and numpy kernels, with no Python object per value.

Exactness comes first. A line takes this path only when the per-record path would surely make the
same row of it: one `{...}` object of valid UTF-8 without escapes or NaN/Infinity (Arrow reads
those where orjson does not, or reads them otherwise), every field the normaliser reads of the
expected JSON type and valid. Every other line, and every line of a part Arrow cannot read, goes
through the per-record path (`Normalizer`) in its place and with the read order (`seq`) it has in
the file, so a block's outcomes are the per-record outcomes, line for line.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from winiswin_pipelines.db.models import TradeStatus
from winiswin_pipelines.legacy import variants as v
from winiswin_pipelines.legacy.normalize import (
    SIDES,
    SYMBOL_PATTERN,
    UID_MAX,
    VIRTUAL_CLOSE_NOTE,
    Normalizer,
    scale_note,
)
from winiswin_pipelines.legacy.readers import jsonl_record, read_jsonl_lines
from winiswin_pipelines.legacy.records import TRADE_COLUMNS, LegacySourceError, Outcome, RawRecord, Row

BLOCK_BYTES = 16 * 1024 * 1024
_PARSE_BLOCK = 1024 * 1024  # Arrow parses in blocks this size, in parallel (a longer line goes record by record)
_NEWLINE, _OPEN, _CLOSE = ord("\n"), ord("{"), ord("}")
# Lines with one of these go record by record: escapes (\u0000, which PostgreSQL cannot store, and
# keys whose escaping the ledger would need) and NUL.
_SUSPECT = (b"\\", b"\x00")
_A1_KEY = b'"rsi_entry"'  # what makes a record A1 (variants.classify): a block without it has no A1 line

# The A1 record's 39 keys with their JSON types (legacy-system.md §2.1), and the two keys the
# normaliser also reads when present. A line with another key, or a value of another type, goes
# record by record; so does NaN/Infinity (Arrow reads them as numbers, orjson refuses them).
_A1_TEXTS = (
    "symbol", "direction", "trade_id", "entry_timestamp", "exit_timestamp", "recorded_at", "close_reason",
    "trend_1h", "trend_15m", "trend_5m", "market_structure",
)
_A1_NUMBERS = (
    "entry_price", "exit_price", "hold_duration_hours", "confidence_score", "leverage", "position_value", "pnl",
    "pnl_pct", "order_blocks_count", "liquidity_zones_count", "stop_loss", "take_profit", "risk_reward_ratio",
    "max_favorable_excursion", "max_adverse_excursion", "rsi_entry", "macd_entry", "macd_signal_entry",
    "macd_histogram_entry", "atr_entry", "bb_upper_entry", "bb_middle_entry", "bb_lower_entry", "bb_width_pct",
    "volume_sma_ratio", "price_vs_ema50", "price_vs_ema200", "confidence", "win_probability",
)
A1_SCHEMA = pa.schema(
    [(name, pa.string()) for name in _A1_TEXTS] + [(name, pa.float64()) for name in _A1_NUMBERS]
    + [("is_winner", pa.bool_())]
)
_PRICES = ("entry_price", "exit_price", "stop_loss", "take_profit")
_UNITS = ("confidence_score", "confidence", "win_probability")
_NUMBERS = (*_PRICES, "leverage", "pnl", "pnl_pct", "position_value", *_UNITS)  # those the normaliser reads
_TIMES = ("entry_timestamp", "exit_timestamp")
# The writer's isoformat(), a real date and time: what Python's fromisoformat and Arrow's cast read alike.
_ISO_TIME = r"^[1-9]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{6})?$"
_UID_PREFIX = "legacy:"
_LONG_WORDS = pa.array([word for word, side in SIDES.items() if side == "LONG"])
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_READ = pajson.ReadOptions(use_threads=True, block_size=_PARSE_BLOCK)
_PARSE = pajson.ParseOptions(explicit_schema=A1_SCHEMA, unexpected_field_behavior="error")


@dataclass(frozen=True)
class LineBlock:
    """Whole lines of a JSON lines file: the number of the first, their byte offset and size, where
    each ends, and their bytes (None once normalised: `read` reads them again from the file)."""

    path: Path
    first_line: int
    offset: int
    size: int
    ends: np.ndarray  # where each line ends in the block: its newline, or the end of a last line without one
    data: bytes | None = None

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate(([0], self.ends[:-1] + 1))

    @property
    def lines(self) -> int:
        return len(self.ends)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            return handle.read(self.size)

    def records(self) -> Iterator:
        """The block's lines through the per-record reader."""
        return read_jsonl_lines(io.BytesIO(self.read()), self.first_line, self.offset)


def line_blocks(path: Path, max_lines: int, block_bytes: int = BLOCK_BYTES) -> Iterator[LineBlock]:
    """The file's lines in blocks of at most `max_lines` lines and about `block_bytes` bytes."""
    if not path.is_file():
        raise LegacySourceError(f"legacy store not found: {path}")
    number, offset, rest = 1, 0, b""
    with path.open("rb") as handle:
        while chunk := handle.read(block_bytes):
            data = rest + chunk if rest else chunk
            newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == _NEWLINE)
            start = 0
            for first in range(0, len(newlines), max_lines):
                ends = newlines[first:first + max_lines]
                end = int(ends[-1]) + 1
                yield LineBlock(path, number, offset, end - start, ends - start, data[start:end])
                number, offset, start = number + len(ends), offset + end - start, end
            rest = data[start:]
    if rest:
        yield LineBlock(path, number, offset, len(rest), np.array([len(rest)]), rest)


@dataclass
class A1Block:
    """A block's outcomes: its A1 lines normalised together (`rows`, an Arrow table of `trades` rows
    in TRADE_COLUMNS order) and every other line's outcome from the per-record path (`odd`)."""

    lines: LineBlock
    seq_base: int  # the normaliser's read order before the block
    normalizer: Normalizer
    rows: pa.Table
    row_lines: np.ndarray  # the line number of each row
    odd: list[Outcome]
    first_time: dt.datetime | None  # of the rows: their earliest entry (or exit) and latest exit (or entry)
    last_time: dt.datetime | None

    @property
    def records(self) -> int:
        return self.lines.lines

    @property
    def size(self) -> int:
        return self.lines.size

    def keys(self) -> list[str]:
        return self.rows.column("trade_uid").to_pylist() + [o.key for o in self.odd if type(o) is Row]

    def outcomes(self) -> list[Outcome]:
        """The block record by record (what the per-record path makes of it), e.g. to upsert it."""
        normalizer = self.normalizer.fork(self.seq_base)
        return [normalizer.normalize(r) if type(r) is RawRecord else r for r in self.lines.records()]


def has_a1_lines(block: LineBlock) -> bool:
    return _A1_KEY in block.read()


def normalize_block(block: LineBlock, normalizer: Normalizer) -> A1Block:
    """`block`'s outcomes: its plain A1 lines normalised together, the others record by record.
    The normaliser's read order moves on past the block, as if it had read it record by record."""
    base, data, starts, ends = normalizer.seq, block.read(), block.starts, block.ends
    table, parsed = _parse(data, starts, ends, np.flatnonzero(_plain_lines(data, starts, ends)))
    fields = _A1Fields(table)
    fast = np.zeros(block.lines, bool)
    fast[parsed[fields.fit]] = True
    odd, taken = _per_record(block, data, fast, normalizer)
    seqs = base + np.cumsum(taken)
    normalizer.seq = base + int(taken.sum())
    rows_at = np.flatnonzero(fast)
    pointers = _Pointers(block.first_line + rows_at, block.offset + starts[rows_at], ends[rows_at] - starts[rows_at],
                         seqs[rows_at])
    rows = fields.rows(normalizer, pointers)
    first, last = _time_range(rows)
    kept = replace(block, data=None)  # its bytes are read again only should it go record by record
    return A1Block(kept, base, normalizer, rows, pointers.lines, odd, first, last)


# which lines, and Arrow's reading of them ---------------------------------------------------------


def _plain_lines(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines Arrow may read in place of the per-record path: one `{...}` each (no blank line, no
    whitespace or byte order mark around it), of valid UTF-8, without escapes or NUL."""
    plain = ends > starts
    if not plain.any():
        return plain
    codes = np.frombuffer(data, np.uint8)
    plain[plain] = (codes[starts[plain]] == _OPEN) & (codes[ends[plain] - 1] == _CLOSE)
    suspects = [at for token in _SUSPECT for at in _find_all(data, token)]
    if not data.isascii() and not _is_utf8(data):
        suspects += np.flatnonzero(codes >= 0x80).tolist()  # which line is not valid UTF-8 is left to orjson
    if suspects:
        plain[np.searchsorted(ends, np.array(suspects))] = False
    return plain


def _find_all(data: bytes, token: bytes) -> list[int]:
    found, at = [], data.find(token)
    while at >= 0:
        found.append(at)
        at = data.find(token, at + 1)
    return found


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse(data: bytes, starts: np.ndarray, ends: np.ndarray, lines: np.ndarray) -> tuple[pa.Table, np.ndarray]:
    """Arrow's reading of `lines` (indices), and the lines it read. A part it cannot read, or reads as
    other than one object a line, is halved until the lines at fault are found; they are left out."""
    if len(lines):
        try:
            table = pajson.read_json(pa.BufferReader(_joined(data, starts, ends, lines)), _READ, _PARSE)
            if table.num_rows == len(lines):
                return table, lines
        except pa.ArrowInvalid:
            pass
    if len(lines) <= 1:
        return A1_SCHEMA.empty_table(), lines[:0]
    half = len(lines) // 2
    (first, first_lines), (second, second_lines) = (_parse(data, starts, ends, part) for part in (lines[:half], lines[half:]))
    return pa.concat_tables([first, second]), np.concatenate([first_lines, second_lines])


def _joined(data: bytes, starts: np.ndarray, ends: np.ndarray, lines: np.ndarray) -> pa.Buffer:
    """The bytes of `lines`, one a line; runs of neighbouring lines are taken as they are."""
    view = memoryview(data)
    breaks = np.flatnonzero(np.diff(lines) != 1) + 1
    firsts, lasts = lines[np.r_[0, breaks]], lines[np.r_[breaks - 1, len(lines) - 1]]
    if len(firsts) == 1:
        return pa.py_buffer(view[starts[firsts[0]]:ends[lasts[0]]])
    return pa.py_buffer(b"\n".join(view[starts[a]:ends[b]] for a, b in zip(firsts, lasts, strict=True)))


# the lines the per-record path reads ------------------------------------------------------------


def _per_record(
    block: LineBlock, data: bytes, fast: np.ndarray, normalizer: Normalizer,
) -> tuple[list[Outcome], np.ndarray]:
    """The outcomes of the lines not `fast`, from the per-record path, each normalised at the read
    order it has in the file; and per line, 1 when it took a place in that order (each fast line does)."""
    taken = fast.astype(np.int64)
    base, odd, odd_taken = normalizer.seq, [], 0
    starts, ends = block.starts, block.ends
    for count, index in enumerate(np.flatnonzero(~fast).tolist()):
        normalizer.seq = seq = base + (index - count) + odd_taken  # the fast lines before it took one each
        start = int(starts[index])
        record = jsonl_record(block.first_line + index, block.offset + start, data[start:int(ends[index]) + 1])
        odd.append(normalizer.normalize(record) if type(record) is RawRecord else record)
        if normalizer.seq != seq:
            taken[index], odd_taken = 1, odd_taken + 1
    return odd, taken


# the A1 fields, checked and normalised together ---------------------------------------------------


@dataclass(frozen=True)
class _Pointers:
    """Where each row's record is: line number, byte offset and length, read order."""

    lines: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    seqs: np.ndarray


class _A1Fields:
    """Arrow's reading of the candidate lines; `fit`: those the per-record path makes a row of as is."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.numbers = {name: _floats(table.column(name)) for name in _NUMBERS}
        self.times = {name: _iso_times(table.column(name)) for name in _TIMES}
        self.fit = self._fit()

    def _fit(self) -> np.ndarray:
        t, numbers = self.table, self.numbers
        fit = _true(pc.is_valid(t.column("rsi_entry")))  # a null rsi_entry may be a missing one: not A1
        id_length = pc.utf8_length(t.column("trade_id"))
        fit &= _true(pc.and_(pc.greater(id_length, 0), pc.less_equal(id_length, UID_MAX - len(_UID_PREFIX))))
        fit &= _true(pc.match_substring_regex(t.column("symbol"), SYMBOL_PATTERN))
        fit &= _true(pc.is_in(t.column("direction"), value_set=pa.array(list(SIDES))))
        for name in _A1_NUMBERS:
            values = t.column(name)
            fit &= ~(_true(pc.is_nan(values)) | _true(pc.is_inf(values)))
        for values in numbers.values():
            fit &= ~((values == 0) & np.signbit(values))  # -0 written as an integer is 0.0 record by record
        for name in _PRICES:
            fit &= ~(numbers[name] < 0)
        for name in _UNITS:
            fit &= ~((numbers[name] < 0) | (numbers[name] > 1))
        # with no confidence_score the per-record path reads `confidence`; a null one may be a missing one
        fit &= ~np.isnan(numbers["confidence_score"]) | np.isnan(numbers["confidence"])
        for _, fits in self.times.values():
            fit &= fits
        return fit

    def rows(self, normalizer: Normalizer, at: _Pointers) -> pa.Table:
        """The fitting lines as `trades` rows, as `Normalizer._ml_record` and `_trade_row` make them."""
        t = self.table.filter(pa.array(self.fit))
        n = t.num_rows
        numbers = {name: values[self.fit] for name, values in self.numbers.items()}
        entry, exit_ = (self.times[name][0].filter(pa.array(self.fit)) for name in _TIMES)
        prices = {name: np.where(numbers[name] == 0, np.nan, numbers[name]) for name in _PRICES}  # 0: unknown
        pnl, pnl_pct, value = numbers["pnl"], numbers["pnl_pct"], numbers["position_value"]
        # v3.16 fed virtual closes through the same recorder with pnl = current_pnl / 100 (a fraction)
        virtual = (pnl != 0) & (pnl == pnl_pct)
        pnl = np.where(virtual, np.where(np.isnan(value) | (value == 0), np.nan, pnl_pct * value), pnl)
        closed = _true(pc.is_valid(exit_)) | ~np.isnan(prices["exit_price"])
        trade_id, reason = t.column("trade_id"), t.column("close_reason")
        columns = {
            "trade_uid": pc.binary_join_element_wise(_UID_PREFIX, trade_id, ""),
            "symbol": t.column("symbol"),
            "side": pc.if_else(pc.is_in(t.column("direction"), value_set=_LONG_WORDS), "LONG", "SHORT"),
            "status": pc.if_else(pa.array(closed), str(TradeStatus.CLOSED), str(TradeStatus.OPEN)),
            "is_virtual": pa.array(virtual),
            "entry_time": entry, "exit_time": exit_,
            **{name: _doubles(values) for name, values in prices.items()},
            "leverage": _doubles(numbers["leverage"]), "pnl": _doubles(pnl), "pnl_pct": _doubles(pnl_pct),
            "exit_reason": pc.if_else(pc.equal(reason, ""), pa.scalar(None, pa.string()), reason),
            "confidence": _doubles(numbers["confidence_score"]),
            "win_probability": _doubles(numbers["win_probability"]),
            "source": pa.repeat(normalizer.source, n),
            "origin": _origins(normalizer, at, virtual, pc.starts_with(trade_id, "REBUILT_")),
        }
        for name, kind in (("quantity", pa.float64()), ("fees", pa.float64()), ("strategy", pa.string())):
            columns[name] = pa.nulls(n, kind)
        return pa.table([columns[name] for name in TRADE_COLUMNS], names=list(TRADE_COLUMNS))


def _iso_times(strings: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray]:
    """UTC timestamps of the writer's naive ISO strings (naive read as UTC), and which values are
    either null or such a string (others: the per-record path says what is wrong with them)."""
    matches = pc.match_substring_regex(strings, _ISO_TIME)
    fits = _true(matches) | _true(pc.is_null(strings))
    candidates = pc.if_else(matches, strings, pa.scalar(None, pa.string()))
    try:
        naive = pc.cast(candidates, pa.timestamp("us"))
    except pa.ArrowInvalid:  # a date that does not exist (30 February): find which, one by one
        real = np.array([text is None or _real_time(text) for text in candidates.to_pylist()], bool)
        fits &= real
        naive = pc.cast(pc.if_else(pa.array(real), candidates, pa.scalar(None, pa.string())), pa.timestamp("us"))
    return naive.cast(_TIMESTAMP), fits


def _real_time(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _origins(normalizer: Normalizer, at: _Pointers, virtual: np.ndarray, rebuilt: pa.ChunkedArray) -> pa.Array:
    """Each row's `origin` as JSON text, with the keys `Normalizer` gives an A1 record's origin."""
    def text(value: object) -> str:
        return orjson.dumps(value).decode()

    line = _digits(at.lines)
    head = f'{{"file":{text(normalizer.relpath)},"position":"line '
    variant = f'","variant":"{v.A1}"' + (f',"sha256":{text(normalizer.sha256)}' if normalizer.sha256 else "")
    scale = f',"confidence_scale":{text(scale_note(normalizer.scale))}' if normalizer.scale else ""
    tail = f'{scale},"naive_time":{text(normalizer.assumed)}'
    notes = pc.if_else(pa.array(virtual), f',"notes":[{text(VIRTUAL_CLOSE_NOTE)}]', "")
    rebuilt_flag = pc.if_else(rebuilt, ',"rebuilt":true', "")
    return pc.binary_join_element_wise(
        head, line, variant, ',"line":', line, ',"offset":', _digits(at.offsets), ',"length":', _digits(at.lengths),
        ',"seq":', _digits(at.seqs), tail, notes, rebuilt_flag, "}", "",
    )


def _time_range(rows: pa.Table) -> tuple[dt.datetime | None, dt.datetime | None]:
    entry, exit_ = rows.column("entry_time"), rows.column("exit_time")
    first = pc.min(pc.coalesce(entry, exit_)).as_py()
    last = pc.max(pc.coalesce(exit_, entry)).as_py()
    return (first and first.astimezone(dt.UTC)), (last and last.astimezone(dt.UTC))


def _true(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _floats(values: pa.ChunkedArray) -> np.ndarray:
    """Doubles as numpy, null as NaN (a line with NaN itself does not fit)."""
    return pc.fill_null(values, np.nan).to_numpy().astype(np.float64, copy=False)


def _doubles(values: np.ndarray) -> pa.Array:
    return pa.array(values, mask=np.isnan(values))


def _digits(numbers: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(numbers, pa.int64()), pa.string())
