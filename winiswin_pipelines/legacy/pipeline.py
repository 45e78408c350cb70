"""One store from file to normalised outcomes: reader, pairing of entry and exit rows (positions CSV,
sibling trade log), normaliser; in batches, A1 JSON lines a block at a time (`a1_blocks`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import orjson

from winiswin_pipelines.legacy import variants as v
from winiswin_pipelines.legacy.a1_blocks import A1Block, has_a1_lines, line_blocks, normalize_block
from winiswin_pipelines.legacy.normalize import FRACTION, PERCENT, UTC, Normalizer, RecordError, symbol_of
from winiswin_pipelines.legacy.readers import read_records
from winiswin_pipelines.legacy.records import Merged, Outcome, RawRecord, Rejected, safe_text
from winiswin_pipelines.legacy.sniff import Store, StoreFormat

DECIDE = "decide"  # iter_outcomes' default: decide the store's confidence scale from its values
SCALED_FIELDS = ("confidence", "win_probability")
# Stores whose writers left no documented scale: the SQLite test rows are on 0..100, the recorder's
# own rows on 0..1, and the positions CSV holds whatever its caller passed.
_SCALE_FROM_VALUES = frozenset({StoreFormat.SQLITE, StoreFormat.POSITIONS_CSV})


Batch = list[Outcome] | A1Block


def iter_outcomes(
    store: Store, naive_timezone: str = "UTC", scale: str | None = DECIDE, sha256: str | None = None
) -> Iterator[Outcome]:
    """Every record of `store`, normalised (`Row`), rejected (`Rejected`) or carried by another (`Merged`).

    `scale`: the store's confidence scale (see `confidence_scale`, which decides it by default);
    `sha256`: the digest of the store's bytes, which every row's `origin` names with its record's place."""
    if scale == DECIDE:
        scale = confidence_scale(store)
    yield from _outcomes(store, Normalizer(store.source, store.relpath, naive_timezone, scale, sha256))


def iter_batches(
    store: Store, batch_size: int, naive_timezone: str = "UTC", scale: str | None = DECIDE,
    sha256: str | None = None, *, vectorised: bool = True,
) -> Iterator[Batch]:
    """`iter_outcomes` in batches of at most `batch_size` records. A plain JSON lines store read with
    naive times as UTC comes a block of lines at a time: an `A1Block` when the block has A1 lines
    (normalised together, the same outcomes as record by record), else the block's outcomes.
    `vectorised=False`: record by record only."""
    if scale == DECIDE:
        scale = confidence_scale(store)
    normalizer = Normalizer(store.source, store.relpath, naive_timezone, scale, sha256)
    if not (vectorised and store.format is StoreFormat.JSONL and normalizer.naive_tz is UTC):
        outcomes = _outcomes(store, normalizer)
        while batch := list(islice(outcomes, batch_size)):
            yield batch
        return
    for block in line_blocks(store.path, batch_size):
        if has_a1_lines(block):
            yield normalize_block(block, normalizer)
        else:
            yield [normalizer.normalize(r) if type(r) is RawRecord else r for r in block.records()]


def _outcomes(store: Store, normalizer: Normalizer) -> Iterator[Outcome]:
    records: Iterable[RawRecord | Rejected | Merged] = read_records(store)
    if store.format is StoreFormat.POSITIONS_CSV:
        records = pair_position_events(records)
    elif store.format is StoreFormat.JSON_ARRAY:
        records = pair_sibling_log(records)
    normalize = normalizer.normalize
    for item in records:
        yield normalize(item) if type(item) is RawRecord else item


def confidence_scale(store: Store) -> str | None:
    """The confidence scale of the whole store, for stores whose writer documented none: 0..100 when
    any confidence or win probability in it is above 1, else 0..1. None: each writer's documented scale."""
    if store.format not in _SCALE_FROM_VALUES:
        return None
    for record in read_records(store):
        if type(record) is RawRecord and any(_above_one(record.data.get(name)) for name in SCALED_FIELDS):
            return PERCENT
    return FRACTION


def _above_one(value: object) -> bool:
    try:
        return float(value) > 1  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def pair_position_events(records: Iterable[RawRecord | Rejected]) -> Iterator[RawRecord | Rejected | Merged]:
    """OPEN and CLOSE rows of one position become one record; memory holds only open positions.

    A pair needs the same position_id and the same symbol: a CLOSE whose id is waiting with another
    symbol is quarantined with both rows named, and the OPEN keeps waiting. An OPEN still waiting
    when a second OPEN of the same id arrives (the ids restart with every bot run) is emitted alone
    as an open trade; a CLOSE with no OPEN is emitted alone too.
    """
    waiting: dict[str, RawRecord] = {}
    for item in _numbered(records):
        if type(item) is not RawRecord:
            yield item
            continue
        position_id = str(item.data.get("position_id", "")).strip()
        if item.variant == "positions-open":
            if position_id in waiting:
                yield waiting.pop(position_id)
            waiting[position_id] = item
            continue
        opened = waiting.get(position_id)
        if opened is None:
            yield item
        elif _symbol_key(opened) != _symbol_key(item):
            yield Rejected(
                item.position,
                f"CLOSE of {position_id} is {_symbol_key(item)} but the open {position_id} ({opened.position}) is "
                f"{_symbol_key(opened)}: OPEN and CLOSE pair only when position id and symbol agree",
                safe_text(orjson.dumps(item.data)), item.variant, item.size,
            )
        else:
            del waiting[position_id]
            yield Merged(opened.position, "positions-open", opened.size)
            yield RawRecord(
                f"{opened.position}+{item.position.removeprefix('line ')}",
                {"open": opened.data, "close": item.data}, None, item.size, variant="positions-pair", seq=item.seq,
                pointer=_both(opened, item),
            )
    yield from waiting.values()


def pair_sibling_log(records: Iterable[RawRecord | Rejected]) -> Iterator[RawRecord | Rejected | Merged]:
    """The sibling repository's log_trade ENTRY row and the EXIT row of the same trade become one record.

    The rows carry no trade id: an EXIT closes the first waiting ENTRY of its symbol whose entry price
    and quantity it repeats (FIFO, as the legacy bots paired). ENTRY rows never closed are emitted
    alone (open trades), in file order, after the rest; an EXIT without its ENTRY is emitted alone.
    Records of other variants pass through.
    """
    waiting: list[RawRecord] = []
    for item in _numbered(records):
        if type(item) is not RawRecord or v.classify(item.data) != v.SIBLING_LOG:
            yield item
        elif not v.is_sibling_exit(item.data):
            waiting.append(item)
        elif (opened := next((entry for entry in waiting if _closes(item, entry)), None)) is None:
            yield item
        else:
            waiting.remove(opened)
            yield Merged(opened.position, v.SIBLING_LOG, opened.size)
            yield RawRecord(
                f"{opened.position}+{item.position.removeprefix('item ')}", {"entry": opened.data, "exit": item.data},
                None, item.size, variant=v.SIBLING_LOG_PAIR, seq=item.seq, pointer=_both(opened, item),
            )
    yield from waiting


def _both(first: RawRecord, second: RawRecord) -> dict:
    """The pointer of a record made of two: both records' pointers, in file order."""
    return {"parts": [first.pointer, second.pointer]}


def _numbered(records: Iterable[RawRecord | Rejected]) -> Iterator[RawRecord | Rejected]:
    """Records with their read order in `seq`: pairing emits open entries last, and a pair where its
    exit was read, yet each keeps the place it has in the store (so a re-run changes nothing)."""
    number = 0
    for item in records:
        if type(item) is RawRecord:
            number += 1
            item.seq = number
        yield item


def _closes(exit_row: RawRecord, entry_row: RawRecord) -> bool:
    if _symbol_key(exit_row) != _symbol_key(entry_row):
        return False
    return all(exit_row.data.get(name) in (None, entry_row.data.get(name)) for name in ("entry_price", "quantity"))


def _symbol_key(record: RawRecord) -> str:
    """The row's symbol as Binance spells it (`ETH/USDT` = `ETHUSDT`); an invalid one as written."""
    value = record.data.get("symbol")
    try:
        return symbol_of(value)
    except RecordError:
        return str(value).strip()
