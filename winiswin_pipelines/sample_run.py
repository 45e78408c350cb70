"""`make run`: the whole pipeline on the bundled sample data, then a summary of what it did.

Each area registers its steps with `@sample_step(order, title)` next to its Dagster definitions;
a step materialises its assets through `SampleRunner.materialize` (so the runs appear in the
Dagster UI) and returns the lines to print.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dagster as dg
from sqlalchemy import text

from winiswin_pipelines import settings
from winiswin_pipelines.db.manager import DatabaseManager, get_database_manager
from winiswin_pipelines.db.models import Base


@dataclass
class SampleRunner:
    instance: dg.DagsterInstance
    resources: dict
    manager: DatabaseManager

    def materialize(
        self, assets: Sequence, *, partition_key: str | None = None, selection: Sequence | None = None,
        tags: dict[str, str] | None = None,
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            assets, instance=self.instance, resources=self.resources, partition_key=partition_key,
            selection=selection, tags=tags,
        )


@dataclass(frozen=True)
class SampleStep:
    order: int
    title: str
    run: Callable[[SampleRunner], list[str]]


_STEPS: list[SampleStep] = []


def sample_step(order: int, title: str) -> Callable[[Callable[[SampleRunner], list[str]]], Callable]:
    """Register a step of `make run`; steps run in `order`."""

    def register(func: Callable[[SampleRunner], list[str]]) -> Callable[[SampleRunner], list[str]]:
        _STEPS.append(SampleStep(order, title, func))
        return func

    return register


def _instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.get() if settings.env("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def table_counts(manager: DatabaseManager) -> dict[str, int]:
    with manager.engine.connect() as conn:
        return {
            name: conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
            for name in sorted(Base.metadata.tables)
        }


def main() -> None:
    from winiswin_pipelines.definitions import defs  # registers every area's steps

    manager = get_database_manager()
    print(f"database: {manager.masked_url} (schema {manager.current_revision()}, head {manager.head_revision()})")
    runner = SampleRunner(_instance(), dict(defs.resources), manager)
    for step in sorted(_STEPS, key=lambda s: s.order):
        started = time.perf_counter()
        print(f"\n== {step.title}")
        for line in step.run(runner):
            print(f"   {line}")
        print(f"   ({time.perf_counter() - started:.1f} s)")
    print("\n== rows per table")
    for name, count in table_counts(manager).items():
        print(f"   {name:<24} {count:>10,}")


if __name__ == "__main__":
    main()
