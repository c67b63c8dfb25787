"""Temperature schedules for the Gumbel-softmax relaxation.

A schedule maps training progress ``p`` in [0, 1] (optimisation step / (total steps - 1)) to tau,
going from ``init`` at p=0 to ``final`` at p=1:

- ``constant``: init (the method's reference setting; ``final`` is ignored)
- ``linear``: init + (final - init) * p
- ``exponential``: init * (final / init) ** p (geometric decay)
- ``cosine``: final + (init - final) * (1 + cos(pi * p)) / 2
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .config import TemperatureConfig
from .registry import Registry

__all__ = ["SCHEDULES", "TemperatureSchedule"]

ScheduleFn = Callable[[float, float, float], float]
SCHEDULES: Registry[ScheduleFn] = Registry("temperature schedule")
SCHEDULES.add("constant", lambda init, final, p: init)
SCHEDULES.add("linear", lambda init, final, p: init + (final - init) * p)
SCHEDULES.add("exponential", lambda init, final, p: init * (final / init) ** p)
SCHEDULES.add("cosine", lambda init, final, p: final + (init - final) * (1 + math.cos(math.pi * p)) / 2)


class TemperatureSchedule:
    """tau as a function of the optimisation step."""

    def __init__(self, config: TemperatureConfig) -> None:
        self.init = config.init
        self.final = config.final if config.final is not None else config.init
        self.name = config.schedule
        self._fn = SCHEDULES.lookup(config.schedule)

    def __call__(self, step: int, total_steps: int) -> float:
        p = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
        return float(self._fn(self.init, self.final, p))
