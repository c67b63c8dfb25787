"""What every stage of a search reads: the spec, the data, the output folder and the run's state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..data import TaskData
from ..engine.train import PerTask, evaluate
from ..errors import SearchInterrupted
from ..hardware import eval_device
from ..runstate import Interrupts, interrupt_message
from ..schema import SearchSpec, StrategyConfig

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """One search run.

    Attributes:
        spec, data: what is searched, on what.
        out: the output folder (None: nothing is written).
        interrupts: SIGINT/SIGTERM while the run is on (stages stop at the next step).
        progress: Lightning's progress bars (the caller decides).
        resume_from: the checkpoint a resumed run continues from.
        callbacks: the caller's Lightning callbacks for the search (e.g. a tuner's pruning).
    """

    spec: SearchSpec
    data: TaskData
    out: Path | None = None
    interrupts: Interrupts = field(default_factory=Interrupts)
    progress: bool = False
    resume_from: Path | None = None
    callbacks: Sequence[pl.Callback] = ()

    @property
    def strategy(self) -> StrategyConfig:
        return self.spec.strategy

    @property
    def validate(self) -> bool:
        """Whether the search validates after every epoch: only where something reads it (the run's
        logs and checkpoints, the plateau schedule on the validation loss, ``keep: best``, the
        caller's callbacks)."""
        return self.out is not None or bool(self.callbacks) or self.strategy.validates

    def stop_if_interrupted(self, phase: str) -> None:
        """After a SIGINT/SIGTERM, end the run here: :class:`SearchInterrupted` with what ``phase``
        (``interrupt_message``'s) leaves and how to go on; nothing while no signal came."""
        if self.interrupts.signum is not None:
            message = interrupt_message(self.out, phase)(self.interrupts.name, None)
            raise SearchInterrupted(message, self.interrupts.signum) from None

    def seed(self, offset: int = 0) -> None:
        """Seed every random generator from the strategy's seed (plus ``offset``)."""
        pl.seed_everything(self.strategy.seed + offset, workers=True, verbose=False)

    @property
    def eval_batch_size(self) -> int:
        strat = self.strategy
        dense = any(t.dense for t in self.spec.tasks)  # per-pixel outputs: keep batches at the training size
        return strat.eval_batch_size or (strat.batch_size if dense else max(strat.batch_size, 256))

    def evaluate(self, net: torch.nn.Module, split: str) -> PerTask:
        """The network's per-task rows on ``split`` (on the evaluation device; moved back to the CPU)."""
        rows = evaluate(
            net,
            getattr(self.data, split),
            self.spec.tasks,
            self.eval_batch_size,
            eval_device(self.strategy.trainer),
            self.strategy.num_workers,
        )
        net.cpu()
        return rows
