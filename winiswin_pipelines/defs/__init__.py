"""One module per area, each exposing `defs = dg.Definitions(...)` (merged by definitions.py)."""
