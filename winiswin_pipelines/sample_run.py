"""`make run`: the whole pipeline on the bundled sample data, then a summary of what it did."""

from __future__ import annotations

import time
import warnings

import dagster as dg
from sqlalchemy import text

from winiswin_pipelines import settings
from winiswin_pipelines.db.manager import DatabaseManager, get_database_manager
from winiswin_pipelines.db.models import Base
from winiswin_pipelines.sample_steps import SampleRunner, registered_steps


def _instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.get() if settings.env("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def table_counts(manager: DatabaseManager) -> dict[str, int]:
    with manager.engine.connect() as conn:
        return {
            name: conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
            for name in sorted(Base.metadata.tables)
        }


def main() -> None:
    # Beta/preview notices of Dagster APIs the project uses knowingly would bury the summary.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    from winiswin_pipelines.definitions import defs  # registers every area's steps

    manager = get_database_manager()
    print(f"database: {manager.masked_url} (schema {manager.current_revision()}, head {manager.head_revision()})")
    runner = SampleRunner(_instance(), dict(defs.resources), manager)
    for step in registered_steps():
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
