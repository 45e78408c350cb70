"""Model-building blocks on labels that span time (AFML ch. 4 and 7), pure numpy/pandas/scikit-learn.

No Dagster and no database here: the `signal_model` asset builds on these.
"""

import os

# LightGBM's OpenMP threads sleep while they wait instead of spinning: on two cores shared with
# PostgreSQL and Dagster, spinning threads steal the cores they wait for (a 200k-row fit on two threads
# took 7.4 s spinning, 4.0 s sleeping, with the machine busy). Read once, when OpenMP loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from winiswin_pipelines.ml.cv import PurgedKFold, walk_forward_split
from winiswin_pipelines.ml.uniqueness import average_uniqueness, concurrent_events

__all__ = ["PurgedKFold", "average_uniqueness", "concurrent_events", "walk_forward_split"]
