"""Microstructure features of order-book snapshots, pure numpy/pandas.

Beside them: `days` (the pipeline's features of a UTC day, pure), `repository` (the SQL on
`book_snapshots` and `training_features`), `training` (a day's features, labels and dataset file
written) and `dataset` (the Parquet files).
"""

from winiswin_pipelines.features.microstructure import (
    BOOK_STATES,
    FEATURE_COLUMNS,
    BookArrays,
    FeatureConfig,
    book_arrays_from_frame,
    compute_features,
    snapshot_gaps,
    usable_mid,
)

__all__ = [
    "BOOK_STATES", "FEATURE_COLUMNS", "BookArrays", "FeatureConfig", "book_arrays_from_frame", "compute_features",
    "snapshot_gaps", "usable_mid",
]
