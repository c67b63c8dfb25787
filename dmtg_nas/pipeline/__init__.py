"""A grouping search as ordered stages: warm start -> one-shot search -> fine-tune -> merge check
-> outputs (:mod:`dmtg_nas.pipeline.run`), each returning a typed record
(:mod:`dmtg_nas.pipeline.records`). Names are imported on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["SearchResult", "Timings", "StageRecord", "retrain", "run_search", "run_stages"]

_EXPORTS = {
    "SearchResult": "records",
    "StageRecord": "records",
    "Timings": "records",
    "retrain": "retrain",
    "run_search": "run",
    "run_stages": "run",
}

if TYPE_CHECKING:
    from .records import SearchResult, StageRecord, Timings
    from .retrain import retrain
    from .run import run_search, run_stages


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
