"""One store from file to normalised outcomes: reader, OPEN/CLOSE pairing for the positions CSV, normaliser."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from winiswin_pipelines.legacy.normalize import Normalizer
from winiswin_pipelines.legacy.readers import read_records
from winiswin_pipelines.legacy.records import Merged, Outcome, RawRecord, Rejected
from winiswin_pipelines.legacy.sniff import Store, StoreFormat


def iter_outcomes(store: Store, naive_timezone: str = "UTC") -> Iterator[Outcome]:
    """Every record of `store`, normalised (`Row`), rejected (`Rejected`) or carried by another (`Merged`)."""
    normalizer = Normalizer(store.source, store.relpath, naive_timezone)
    records: Iterable[RawRecord | Rejected | Merged] = read_records(store)
    if store.format is StoreFormat.POSITIONS_CSV:
        records = pair_position_events(records)
    normalize = normalizer.normalize
    for item in records:
        yield normalize(item) if type(item) is RawRecord else item


def pair_position_events(records: Iterable[RawRecord | Rejected]) -> Iterator[RawRecord | Rejected | Merged]:
    """OPEN and CLOSE rows of one position_id become one record; memory holds only open positions.

    An OPEN still waiting when a second OPEN of the same id arrives (the ids restart with every bot
    run) is emitted alone as an open trade; a CLOSE with no OPEN is emitted alone too.
    """
    waiting: dict[str, RawRecord] = {}
    for item in records:
        if type(item) is not RawRecord:
            yield item
            continue
        position_id = str(item.data.get("position_id", "")).strip()
        if item.variant == "positions-open":
            if position_id in waiting:
                yield waiting.pop(position_id)
            waiting[position_id] = item
            continue
        opened = waiting.pop(position_id, None)
        if opened is None:
            yield item
            continue
        yield Merged(opened.position, "positions-open", opened.size)
        yield RawRecord(
            f"{opened.position}+{item.position.removeprefix('line ')}",
            {"open": opened.data, "close": item.data}, None, item.size, variant="positions-pair",
        )
    yield from waiting.values()
