"""Retire the legacy files (phase 5 of the owner's plan): delete them, or move them aside, once safe.

A file goes only when all of it is proven kept: its bytes (as they are now, by SHA-256) were
migrated, the accounting check of that migration passed afterwards, and the cold copy of those
bytes has just been read back with the same SHA-256 and size. If any file of the folder fails one of
these, nothing is touched and every failure is named.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from winiswin_pipelines.coldstore import ColdStore
from winiswin_pipelines.db.manager import DatabaseManager
from winiswin_pipelines.legacy import sources
from winiswin_pipelines.legacy.originals import ColdCopyError, Fingerprint, check_cold_copy, fingerprint
from winiswin_pipelines.legacy.sniff import Store

_SQLITE_SIDECARS = ("-wal", "-journal")  # pages a SQLite file's cold copy would not hold


@dataclass
class Readiness:
    """Whether one store may be retired, and if not, what is not verified."""

    store: Store
    original: Fingerprint
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems


def check_retirement(manager: DatabaseManager, cold: ColdStore, store: Store) -> Readiness:
    original = fingerprint(store.path)
    readiness = Readiness(store, original)
    problems = readiness.problems
    known = sources.find(manager, original.sha256)
    if known is None or known.migrated_at is None:
        problems.append(f"not migrated: these bytes (SHA-256 {original.sha256[:12]}…) were never migrated "
                        "(changed since its migration, or never migrated)")
    elif known.checked_at is None or known.checked_at < known.migrated_at:
        problems.append("accounting check not passed since its migration (run the migration's verification)")
    try:
        check_cold_copy(cold, original)
        sources.record_verified(manager, original.sha256)
    except ColdCopyError as exc:
        problems.append(f"cold copy not verified: {exc}")
    for suffix in _SQLITE_SIDECARS:
        sidecar = store.path.with_name(store.path.name + suffix)
        if sidecar.exists():
            problems.append(f"{sidecar.name} holds pages the cold copy does not (open the database once to fold it in)")
    return readiness


def retire(manager: DatabaseManager, cold: ColdStore, stores: list[Store], move_to: Path | None = None) -> list[Readiness]:
    """Delete (or move under `move_to`, keeping their paths) every store when every one is ready;
    otherwise touch nothing. Returns each store's readiness."""
    checks = [check_retirement(manager, cold, store) for store in stores]
    if all(check.ready for check in checks):
        for check in checks:
            _retire_file(check.store, move_to)
            sources.record_retired(manager, check.original.sha256, move_to)
    return checks


def _retire_file(store: Store, move_to: Path | None) -> None:
    if move_to is None:
        store.path.unlink()
        return
    target = move_to / store.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(store.path, target)
