"""Microstructure features of order-book snapshots, pure numpy/pandas (`store` holds their PostgreSQL I/O)."""

from winiswin_pipelines.features.microstructure import (
    BOOK_STATES,
    FEATURE_COLUMNS,
    BookArrays,
    FeatureConfig,
    book_arrays_from_frame,
    compute_features,
)

__all__ = [
    "BOOK_STATES", "FEATURE_COLUMNS", "BookArrays", "FeatureConfig", "book_arrays_from_frame", "compute_features",
]
