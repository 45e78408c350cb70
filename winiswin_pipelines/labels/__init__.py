"""Triple-barrier labels and volatility targets (AFML ch. 3), pure numpy/pandas."""

from winiswin_pipelines.labels.triple_barrier import BARRIERS, get_triple_barrier_label
from winiswin_pipelines.labels.volatility import get_daily_vol, get_return_vol

__all__ = ["BARRIERS", "get_daily_vol", "get_return_vol", "get_triple_barrier_label"]
