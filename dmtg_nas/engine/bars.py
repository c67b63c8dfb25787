"""Lightning's progress bar for the package's trainings: on stderr, named after the stage.

Lightning draws its bars on stdout, where a command's result goes (``dmtg search --json > out``
must be the JSON alone), and names them ``Epoch 3`` whichever training runs. A search runs several
(the warm start, the search, the fine-tune, the merge check's final network): each gets a
:class:`StageBar` that writes to stderr and reads ``search: epoch 4/10``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import convert_inf

__all__ = ["StageBar", "stage_bars"]


def _on_stderr(make: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``make`` (one of Lightning's ``init_*_tqdm``), with the bar it opens on stderr, not stdout."""

    def opened(self: Any) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return make(self)

    return opened


class StageBar(TQDMProgressBar):
    """Lightning's tqdm bars on stderr, described as ``STAGE: epoch E/N`` and ``STAGE: validation``."""

    def __init__(self, stage: str) -> None:
        super().__init__(leave=False)  # one bar for all epochs, left on screen when the training ends
        self.stage = stage

    @property
    def train_description(self) -> str:
        return self.stage

    @property
    def validation_description(self) -> str:
        return f"{self.stage}: validation"

    @property
    def sanity_check_description(self) -> str:
        return f"{self.stage}: sanity check"

    # Lightning opens its bars on sys.stdout at the moment it creates them
    init_sanity_tqdm = _on_stderr(TQDMProgressBar.init_sanity_tqdm)
    init_train_tqdm = _on_stderr(TQDMProgressBar.init_train_tqdm)
    init_validation_tqdm = _on_stderr(TQDMProgressBar.init_validation_tqdm)
    init_predict_tqdm = _on_stderr(TQDMProgressBar.init_predict_tqdm)
    init_test_tqdm = _on_stderr(TQDMProgressBar.init_test_tqdm)

    # Lightning's own versions of the next two draw the bar once described as "Epoch 0" or
    # "Validation DataLoader 0" before anyone can rename it
    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        bar.reset(total=convert_inf(self.total_train_batches))
        bar.initial = 0
        bar.set_description(f"{self.stage}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self.has_dataloader_changed(dataloader_idx):
            return
        bar = self.val_progress_bar
        bar.reset(total=convert_inf(self.total_val_batches_current_dataloader))
        bar.initial = 0
        bar.set_description(self.sanity_check_description if trainer.sanity_checking else self.validation_description)


def stage_bars(progress: bool, stage: str) -> list[pl.Callback]:
    """The callbacks that draw a training's progress: a :class:`StageBar` when ``progress`` is on
    (Lightning refuses a bar callback in a Trainer with ``enable_progress_bar=False``)."""
    return [StageBar(stage)] if progress else []
