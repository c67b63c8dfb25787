"""Lightning's progress bar for the package's trainings: on stderr, named after the stage, one line.

Lightning draws its bars on stdout, where a command's result goes (``dmtg search --json > out``
must be the JSON alone), names them ``Epoch 3`` whichever training runs, estimates the time left
of the current epoch only, and opens a second bar for each validation. A search runs several
trainings (the warm start, the search, the fine-tune, the merge check's final network): each gets a
:class:`StageBar`, one line on stderr in the format of the command line's other progress lines
(:data:`dmtg_nas.progress.BAR_FORMAT`) that reads
``search: epoch 33/40 |█████████▊  | 04:49 elapsed, ETA 01:03, val_loss=0.411, train_loss=0.118``:
the ETA is the time left of the whole stage (all its epochs), and a validation shows on that line
(``search: epoch 20/40, validation``), not on a second one.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from ..progress import BAR_FORMAT, draw_interval, fit_width

__all__ = ["StageBar", "stage_bars"]


def _on_stderr(make: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``make`` (one of Lightning's ``init_*_tqdm``), with the bar it opens on stderr, not stdout."""

    def opened(self: Any) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return fit_width(make(self))

    return opened


def _hidden(self: Any) -> Tqdm:
    """No bar of its own (the training's line says what runs)."""
    return Tqdm(disable=True)


class StageBar(TQDMProgressBar):
    """Lightning's tqdm bar on stderr: one line per training, ``STAGE: epoch E/N``, counting the
    batches of all N epochs so that the ETA is the stage's."""

    BAR_FORMAT = BAR_FORMAT

    def __init__(self, stage: str) -> None:
        super().__init__(leave=False)  # one bar for all epochs (not one per epoch), left on screen at the end
        self.stage = stage
        self._drawn = -math.inf  # when the line was last drawn (time.monotonic)
        self._interval = 0.0  # seconds between draws (draw_interval of the bar's stream, at the start)

    def _epoch(self) -> str:
        trainer = self._trainer
        return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}" if trainer is not None else ""

    @property
    def train_description(self) -> str:
        return f"{self.stage}: {self._epoch()}"

    @property
    def validation_description(self) -> str:
        return f"{self.stage}: validation"

    @property
    def sanity_check_description(self) -> str:
        return f"{self.stage}: sanity check"

    # Lightning opens its bars on sys.stdout at the moment it creates them; validation (and the
    # sanity check before the first epoch) draw no second line
    init_train_tqdm = _on_stderr(TQDMProgressBar.init_train_tqdm)
    init_predict_tqdm = _on_stderr(TQDMProgressBar.init_predict_tqdm)
    init_test_tqdm = _on_stderr(TQDMProgressBar.init_test_tqdm)
    init_sanity_tqdm = _hidden
    init_validation_tqdm = _hidden

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: the same for every training of a run
        return metrics

    def _batches(self) -> int | None:
        total = convert_inf(self.total_train_batches)
        return int(total) if total else None

    def on_train_start(self, trainer: pl.Trainer, *_: Any) -> None:
        super().on_train_start(trainer)
        bar, per_epoch = self.train_progress_bar, self._batches()
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        done = trainer.current_epoch * per_epoch if per_epoch else 0  # a resumed training starts further on
        bar.reset(total=per_epoch * epochs if per_epoch and epochs else None)
        self._interval = draw_interval(bar.fp)
        bar.initial = bar.n = done  # the rate counts this run's batches only

    # Lightning's own version resets the bar each epoch (an ETA for the epoch) and draws it once
    # described as "Epoch 0" before anyone can rename it
    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        self.train_progress_bar.set_description_str(self.train_description)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar, per_epoch = self.train_progress_bar, self._batches()
        if not self._should_update(batch_idx + 1, per_epoch or 0):
            return
        if not bar.disable:
            bar.n = trainer.current_epoch * per_epoch + batch_idx + 1 if per_epoch else bar.n + 1
            now = time.monotonic()
            # by hand: refresh() ignores tqdm's mininterval, and get_metrics (a device sync) runs only to draw
            if now - self._drawn >= self._interval:  # a log file gets a line every few seconds
                bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
                bar.refresh()
                self._drawn = now

    def _describe(self, trainer: pl.Trainer, suffix: str = "") -> None:
        """The training's line named ``train_description + suffix``, during a fit's own validations
        (not the sanity check, nor a ``validate`` call)."""
        if not trainer.sanity_checking and self._train_progress_bar is not None and trainer.state.fn == "fit":
            self.train_progress_bar.set_description_str(self.train_description + suffix)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._describe(trainer, ", validation")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._describe(trainer)


def stage_bars(progress: bool, stage: str) -> list[pl.Callback]:
    """The callbacks that draw a training's progress: a :class:`StageBar` when ``progress`` is on
    (Lightning refuses a bar callback in a Trainer with ``enable_progress_bar=False``)."""
    return [StageBar(stage)] if progress else []
