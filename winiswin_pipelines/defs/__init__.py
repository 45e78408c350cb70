"""The Dagster layer, one module per area, loaded by `dg.load_from_defs_folder`; `partitions.py` is the only module the others import."""
