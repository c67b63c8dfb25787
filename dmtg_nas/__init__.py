"""dmtg-nas: one-shot differentiable multi-task grouping (DMTG) on NNI.

Quick start::

    import dmtg_nas
    spec = dmtg_nas.load_spec("planted", overrides=["strategy.epochs=20"])
    result = dmtg_nas.search(spec, out_dir="runs/planted")
    result.groups                      # [['t2', 't4'], ['t7', 't8', 't9'], ...]
    result.metrics["totals"]["test"]   # {'total_loss': ..., ...}

Names are imported lazily, so ``import dmtg_nas`` (and the ``dmtg`` command's start) stays cheap
until torch/NNI are actually needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DataError": "errors",
    "DmtgError": "errors",
    "SpecError": "errors",
    "SearchSpec": "config",
    "StrategyConfig": "config",
    "load_spec": "config",
    "load_strategy": "config",
    "SearchResult": "runner",
    "evaluate": "runner",
    "run_search": "runner",
    "GroupedNetwork": "space",
    "GroupingSpace": "space",
    "load_model": "space",
    "DMTG": "strategy",
}

__all__ = [
    "DMTG",
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

if TYPE_CHECKING:
    from .config import SearchSpec, StrategyConfig, load_spec, load_strategy
    from .errors import DataError, DmtgError, SpecError
    from .runner import SearchResult, evaluate, run_search
    from .runner import run_search as search
    from .space import GroupedNetwork, GroupingSpace, load_model
    from .strategy import DMTG


def __getattr__(name: str) -> Any:
    if name == "search":
        name_ = "run_search"
        return getattr(importlib.import_module(".runner", __name__), name_)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'dmtg_nas' has no attribute {name!r}")
