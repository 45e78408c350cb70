"""Accounting of one store's migration: every record read is inserted, updated, unchanged, a duplicate or quarantined.

- inserted: a new row in `trades` / `trade_partial_exits`;
- updated: a stored row of this store replaced by a changed record (or an OPEN trade closed by it);
- unchanged: already stored exactly so (a re-run), or the same trade already migrated from another
  store (a closed trade is never reopened by a pending entry);
- duplicates: records whose trade another record of the same store carries (the same id twice in
  the batch, or an OPEN row paired with its CLOSE row in the positions CSV);
- quarantined: in `legacy_quarantine` with the reason (unreadable, invalid, or refused by PostgreSQL).

Records an earlier migration of the store wrote that are no longer in the file are not read, so
they are outside that sum: they are left in place and reported apart (`gone`, with their ids).
A row whose record is unchanged but now lives in another version of the file counts as updated: its
`origin` points into the new version's bytes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

import orjson

from winiswin_pipelines.legacy.records import Merged, Outcome, Rejected, Row

GONE_IDS_KEPT = 1000  # ids of records gone from the file kept in the report
GONE_IDS_SHOWN = 10  # and shown in the summary line


@dataclass
class VariantStats:
    read: int = 0
    migrated: int = 0
    quarantined: int = 0
    first_time: dt.datetime | None = None
    last_time: dt.datetime | None = None

    def add_times(self, first: dt.datetime | None, last: dt.datetime | None) -> None:
        if first is not None and (self.first_time is None or first < self.first_time):
            self.first_time = first
        if last is not None and (self.last_time is None or last > self.last_time):
            self.last_time = last


@dataclass
class SourceReport:
    source: str
    file: str
    format: str
    naive_timezone: str
    dry_run: bool = False
    read: int = 0
    migrated: int = 0
    quarantined: int = 0
    merged: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    batch_duplicates: int = 0
    db_rejected: int = 0
    seconds: float = 0.0
    confidence_scale: str | None = None  # decided from the store's values; None: each writer's documented scale
    gone: dict[str, int] = field(default_factory=dict)  # per table: records no longer in the file, left in place
    gone_ids: list[str] = field(default_factory=list)  # `table: key` of the first GONE_IDS_KEPT of them
    quarantine_released: int = 0  # quarantined by an earlier run, migrated now (the record was fixed)
    sha256: str | None = None  # of the file's bytes, as migrated
    cold_uri: str | None = None  # their copy in cold storage
    skipped: str | None = None  # why nothing was read: these bytes were migrated already
    cold_seconds: float = 0.0  # of `seconds`: fingerprinting the file and keeping its cold copy
    variants: dict[str, VariantStats] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        stats = self._variant(outcome.variant or "unknown")
        stats.read += 1
        self.read += 1
        if type(outcome) is Row:
            self.migrated += 1
            stats.migrated += 1
            stats.add_times(outcome.first_time, outcome.last_time)
        elif type(outcome) is Rejected:
            self.quarantined += 1
            stats.quarantined += 1
        elif type(outcome) is Merged:
            self.merged += 1

    def add_rows(self, variant: str, count: int, first: dt.datetime | None, last: dt.datetime | None) -> None:
        """`count` records of `variant` normalised into rows together (an A1 block), spanning first..last."""
        if count:
            stats = self._variant(variant)
            stats.read, stats.migrated = stats.read + count, stats.migrated + count
            self.read, self.migrated = self.read + count, self.migrated + count
            stats.add_times(first, last)

    def add_upsert(self, inserted: int, updated: int, unchanged: int, duplicates: int) -> None:
        self.inserted += inserted
        self.updated += updated
        self.unchanged += unchanged
        self.batch_duplicates += duplicates

    def refused_by_database(self, row: Row) -> None:
        """A row PostgreSQL refused: it moves from migrated to quarantined."""
        stats = self._variant(row.variant)
        self.migrated -= 1
        stats.migrated -= 1
        self.quarantined += 1
        stats.quarantined += 1
        self.db_rejected += 1

    def note_gone(self, table: str, keys: list[str]) -> None:
        """Records of `table` an earlier migration of this store wrote and this one no longer found."""
        if keys:
            self.gone[table] = self.gone.get(table, 0) + len(keys)
            room = GONE_IDS_KEPT - len(self.gone_ids)
            self.gone_ids += [f"{table}: {key}" for key in keys[:max(room, 0)]]

    @property
    def gone_total(self) -> int:
        return sum(self.gone.values())

    def _variant(self, name: str) -> VariantStats:
        if name not in self.variants:
            self.variants[name] = VariantStats()
        return self.variants[name]

    @property
    def duplicates(self) -> int:
        return self.batch_duplicates + self.merged

    @property
    def accounted(self) -> int:
        return self.inserted + self.updated + self.unchanged + self.duplicates + self.quarantined

    @property
    def balanced(self) -> bool:
        """read = inserted + updated + unchanged + duplicates + quarantined (a dry run only reads)."""
        return self.dry_run or self.read == self.accounted

    @property
    def time_range(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        firsts = [s.first_time for s in self.variants.values() if s.first_time]
        lasts = [s.last_time for s in self.variants.values() if s.last_time]
        return (min(firsts) if firsts else None, max(lasts) if lasts else None)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: bytes) -> SourceReport:
        data = orjson.loads(text)
        variants = {name: VariantStats(**_times(stats)) for name, stats in data.pop("variants", {}).items()}
        return cls(**data, variants=variants)

    def summary_line(self) -> str:
        if self.skipped:
            return f"{self.file}: skipped, {self.skipped}"
        if self.dry_run:
            return (f"{self.file}: read {self.read:,} = would migrate {self.migrated:,} + paired {self.merged:,} "
                    f"+ quarantine {self.quarantined:,} (dry run)")
        line = (
            f"{self.file}: read {self.read:,} = inserted {self.inserted:,} + updated {self.updated:,} "
            f"+ unchanged {self.unchanged:,} + duplicates {self.duplicates:,} + quarantined {self.quarantined:,}"
            f" [{'balanced' if self.balanced else 'NOT BALANCED'}]"
        )
        if self.quarantine_released:
            line += f"; {self.quarantine_released:,} quarantined earlier now migrate"
        if self.gone_total:
            shown = ", ".join(self.gone_ids[:GONE_IDS_SHOWN]) + (", ..." if self.gone_total > GONE_IDS_SHOWN else "")
            line += f"; GONE from the file since an earlier migration, left in place: {self.gone_total:,} ({shown})"
        return line


def _times(stats: dict) -> dict:
    for key in ("first_time", "last_time"):
        if stats.get(key):
            stats[key] = dt.datetime.fromisoformat(stats[key])
    return stats
