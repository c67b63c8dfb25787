"""Former home of the search pipeline, now :mod:`dmtg_nas.pipeline` (stages) and :mod:`dmtg_nas.engine` (training).

Deprecated: these names moved; they are re-exported here (with a ``DeprecationWarning``) for code
written against earlier versions.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "SearchResult": "dmtg_nas.pipeline.records",
    "run_search": "dmtg_nas.pipeline.run",
    "retrain": "dmtg_nas.pipeline.retrain",
    "write_outputs": "dmtg_nas.pipeline.outputs",
    "adjusted_rand_index": "dmtg_nas.pipeline.outputs",
    "ProbabilityHistory": "dmtg_nas.pipeline.search",
    "evaluate": "dmtg_nas.engine.train",
    "train_network": "dmtg_nas.engine.train",
    "train_partition": "dmtg_nas.engine.train",
    "build_evaluator": "dmtg_nas.nni.evaluator",
}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"{__name__}.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
