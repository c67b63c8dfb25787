"""Everything that touches NNI: the search space, the DMTG strategy, the evaluator, the web portal.

- :mod:`.space`: :class:`~.space.GroupingSpace`, the task grouping as an NNI model space;
- :mod:`.router`: the method (the relaxed sample and the loss it weights) as NNI's supernet module;
- :mod:`.oneshot`: the one-shot training loop and the relaxation as an NNI strategy;
- :mod:`.strategy`: :class:`~.strategy.DMTG`, the whole pipeline of a preset as an NNI strategy;
- :mod:`.evaluator`: NNI's traced Lightning evaluator for a spec;
- :mod:`.search`: the pipeline's search stage in NNI's sequential engine;
- :mod:`.portal`, :mod:`.tuner`: ``dmtg portal`` (an NNI experiment and its trials) and the
  Optuna-backed NNI tuner.

No module outside this package imports NNI (ruff's banned-api rule). NNI is frozen upstream: keeping
it here keeps a replacement cheap. Names are imported on first use::

    from nni.nas.experiment import NasExperiment
    from dmtg_nas.nni import DMTG, experiment_inputs

    space, evaluator = experiment_inputs(spec)
    NasExperiment(space, evaluator, DMTG.from_preset("dmtg")).run()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..quiet import quiet_libraries

# every module here imports NNI, and NNI warns at import about torch classes it does not know:
# imported here first (this package loads before any of its modules), with that warning ignored
with quiet_libraries():
    import nni.nas.nn.pytorch  # noqa: F401

__all__ = [
    "DMTG",
    "GroupingSpace",
    "OneShotDMTG",
    "RouterBank",
    "build_evaluator",
    "experiment_inputs",
    "gumbel_noise",
]

_EXPORTS = {
    "DMTG": "strategy",
    "GroupingSpace": "space",
    "OneShotDMTG": "oneshot",
    "RouterBank": "router",
    "build_evaluator": "evaluator",
    "experiment_inputs": "evaluator",
    "gumbel_noise": "router",
}

if TYPE_CHECKING:
    from .evaluator import build_evaluator, experiment_inputs
    from .oneshot import OneShotDMTG
    from .router import RouterBank, gumbel_noise
    from .space import GroupingSpace
    from .strategy import DMTG


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
