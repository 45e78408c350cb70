"""The Dagster code location: every module of `defs/`, loaded by Dagster's own loader, plus the resources.

Importing it opens no connection and reads no data file: resources connect when a run uses them,
and the legacy stores are partitions added when they are discovered.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from winiswin_pipelines.resources import build_resources


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(resources=build_resources()),
    )
