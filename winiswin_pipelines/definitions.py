"""The Dagster code location: every area's definitions under `defs/`, plus the shared resources.

Each module in `winiswin_pipelines/defs/` exposes a module-level `defs = dg.Definitions(...)`;
they are merged here, so adding an area never means editing this file.
"""

from __future__ import annotations

import importlib
import pkgutil

import dagster as dg

import winiswin_pipelines.defs as defs_package
from winiswin_pipelines.resources import build_resources


def _area_definitions() -> list[dg.Definitions]:
    modules = (
        importlib.import_module(f"{defs_package.__name__}.{info.name}")
        for info in sorted(pkgutil.iter_modules(defs_package.__path__), key=lambda info: info.name)
    )
    return [module.defs for module in modules if isinstance(getattr(module, "defs", None), dg.Definitions)]


defs = dg.Definitions.merge(*_area_definitions(), dg.Definitions(resources=build_resources()))
