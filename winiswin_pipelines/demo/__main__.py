"""`python -m winiswin_pipelines.demo` (what `make run` runs): every step in order, then the rows per table."""

from __future__ import annotations

import os
import time
import warnings

import dagster as dg

from winiswin_pipelines import factories
from winiswin_pipelines.demo.runner import DemoRunner, demo_instance


def main() -> None:
    # Beta/preview notices of Dagster APIs the project uses knowingly would bury the summary; they are
    # raised while the definitions load, hence the imports after the filters.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its INFO lines (creating its tables) are not news
    from winiswin_pipelines.definitions import defs
    from winiswin_pipelines.demo.steps import STEPS

    manager = factories.database_manager()
    print(f"database: {manager.masked_url} (schema {manager.current_revision()}, head {manager.head_revision()})")
    runner = DemoRunner(demo_instance(), defs(), manager)
    for title, step in STEPS:
        started = time.perf_counter()
        print(f"\n== {title}")
        for line in step(runner):
            print(f"   {line}")
        print(f"   ({time.perf_counter() - started:.1f} s)")
    print("\n== rows per table")
    for name, count in manager.row_counts().items():
        print(f"   {name:<24} {count:>10,}")


if __name__ == "__main__":
    main()
