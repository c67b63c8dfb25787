"""Former home of the grouping space (:mod:`dmtg_nas.nni.space`) and the grouped network (:mod:`dmtg_nas.network`).

Deprecated: these names moved; they are re-exported here (with a ``DeprecationWarning``) for code
written against earlier versions.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "GroupingSpace": "dmtg_nas.nni.space",
    "HeadBank": "dmtg_nas.nni.space",
    "GroupedNetwork": "dmtg_nas.network",
    "apply_heads": "dmtg_nas.network",
    "groups_from_sample": "dmtg_nas.network",
    "load_model": "dmtg_nas.network",
}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"{__name__}.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
