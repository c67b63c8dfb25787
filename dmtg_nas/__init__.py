"""dmtg-nas: one-shot differentiable multi-task grouping (DMTG) on NNI.

Quick start::

    import dmtg_nas
    spec = dmtg_nas.load_spec("planted", overrides=["strategy.epochs=20"])
    result = dmtg_nas.search(spec, out_dir="runs/planted")
    result.groups                      # [['t2', 't4'], ['t7', 't8', 't9'], ...]
    result.test_loss                   # the final network's total test loss
    result.metrics["totals"]["test"]   # {'total_loss': ..., ...}, as in metrics.json

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
    "SearchResult": "pipeline.records",
    "evaluate": "engine.train",
    "run_search": "pipeline.run",
    "search": "pipeline.run",
    "GroupedNetwork": "network",
    "GroupingSpace": "nni.space",
    "load_model": "network",
    "DMTG": "nni.strategy",
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
    from .engine.train import evaluate
    from .errors import DataError, DmtgError, SpecError
    from .network import GroupedNetwork, load_model
    from .nni.space import GroupingSpace
    from .nni.strategy import DMTG
    from .pipeline.records import SearchResult
    from .pipeline.run import run_search
    from .pipeline.run import run_search as search


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        attr = "run_search" if name == "search" else name
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), attr)
    raise AttributeError(f"module 'dmtg_nas' has no attribute {name!r}")
