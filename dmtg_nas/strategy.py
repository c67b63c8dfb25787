"""Former home of the DMTG strategy, now in NNI's wing: :mod:`dmtg_nas.nni.strategy`.

Deprecated: these names moved; they are re-exported here (with a ``DeprecationWarning``) for code
written against earlier versions.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {
    "DMTG": "dmtg_nas.nni.strategy",
    "DMTGLightningModule": "dmtg_nas.nni.oneshot",
    "OneShotDMTG": "dmtg_nas.nni.oneshot",
    "RouterBank": "dmtg_nas.nni.router",
    "gumbel_noise": "dmtg_nas.nni.router",
}

__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"{__name__}.{name} moved to {_MOVED[name]}.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
