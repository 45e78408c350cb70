"""Model-building blocks on labels that span time (AFML ch. 4 and 7), pure numpy/pandas/scikit-learn.

No Dagster and no database here: the `signal_model` asset builds on these.
"""

from winiswin_pipelines.ml.cv import PurgedKFold, walk_forward_split
from winiswin_pipelines.ml.uniqueness import average_uniqueness, concurrent_events

__all__ = ["PurgedKFold", "average_uniqueness", "concurrent_events", "walk_forward_split"]
