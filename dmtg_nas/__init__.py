"""dmtg-nas: one-shot differentiable multi-task grouping (DMTG) on NNI.

Quick start::

    import dmtg_nas
    spec = dmtg_nas.load_spec("planted", overrides=["strategy.epochs=20"])
    result = dmtg_nas.search(spec, out_dir="runs/planted")
    print(result.groups, result.metrics["totals"]["test"])
"""

from __future__ import annotations

from .config import SearchSpec, StrategyConfig, load_spec, load_strategy
from .errors import DataError, DmtgError, SpecError
from .search import SearchResult, evaluate, run_search
from .space import GroupedNetwork, GroupingSpace, load_model

__version__ = "0.1.0"

search = run_search

__all__ = [
    "DataError",
    "DmtgError",
    "GroupedNetwork",
    "GroupingSpace",
    "SearchResult",
    "SearchSpec",
    "SpecError",
    "StrategyConfig",
    "__version__",
    "evaluate",
    "load_model",
    "load_spec",
    "load_strategy",
    "run_search",
    "search",
]
