"""The search's NNI evaluator: the multi-task module, NNI's traced Trainer and traced loaders.

NNI's one-shot strategies train a traced ``Lightning`` evaluator; :func:`build_evaluator` makes it
for a spec, with the search's checkpoints, logs and interruption handling, and records the spec and
the data on it (:class:`RunInputs`), which the :class:`~dmtg_nas.nni.strategy.DMTG` strategy reads
to run the whole pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from nni.nas.evaluator.pytorch import DataLoader, Lightning, LightningModule, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from ..components import load_data
from ..data import TaskData, make_loader
from ..engine.bars import stage_bars
from ..engine.module import BestEpoch, MultiTaskModule
from ..hardware import search_logger, trainer_kwargs, use_pinned_memory, user_callbacks
from ..quiet import quiet_libraries
from ..runstate import (
    AtomicCheckpointIO,
    InterruptCallback,
    Interrupts,
    RunStateCallback,
    interrupt_message,
    spec_identity,
)
from ..schema import SearchSpec
from .space import GroupingSpace

__all__ = ["NniMultiTaskModule", "RunInputs", "build_evaluator", "experiment_inputs", "run_inputs"]


@dataclass
class RunInputs:
    """What a search runs on besides the space: the spec, its data and the output folder."""

    spec: SearchSpec
    data: TaskData
    out_dir: Path | None = None


class NniMultiTaskModule(MultiTaskModule, LightningModule):
    """The multi-task module as NNI's evaluator takes it (an NNI ``LightningModule``)."""

    inputs: RunInputs | None = None
    held_out_loader: Any = None  # the validation batches (strategy.bilevel: the logits learn from them)
    best_epoch: BestEpoch | None = None  # strategy.keep: best: the callback keeping the best epoch


def run_inputs(evaluator: Any) -> RunInputs | None:
    """The spec and data an evaluator from :func:`build_evaluator` was made for (None for others)."""
    module = getattr(evaluator, "module", None)
    return getattr(module, "inputs", None)


def _log_version(out_dir: Path, resume_from: Path | None) -> str:
    """``logs`` for a new run; ``logs-resume-<n>`` for the n-th resumption (never overwrite logs)."""
    if resume_from is None:
        return "logs"
    n = 1
    while (out_dir / f"logs-resume-{n}").exists():
        n += 1
    return f"logs-resume-{n}"


def build_evaluator(
    spec: SearchSpec,
    data: TaskData,
    out_dir: Path | None = None,
    *,
    progress: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    checkpoint: bool = True,
    resume_from: Path | None = None,
    interrupts: Interrupts | None = None,
    validate: bool | None = None,
) -> Lightning:
    """NNI's Lightning evaluator for the spec: the multi-task module, a traced Trainer and loaders.

    ``validate``: run a validation pass after every epoch (the logged ``val_loss`` and per-task
    curves, the plateau schedule, ``keep: best``, callbacks that read them); False: none; None
    (default): where something reads it, as ``dmtg search`` decides (an output folder, callbacks,
    :attr:`~dmtg_nas.schema.StrategyConfig.validates`).

    The evaluator carries the spec and the data (:func:`run_inputs`), so that the
    :class:`~dmtg_nas.nni.strategy.DMTG` strategy can run the whole pipeline on it.

    With ``out_dir`` and ``checkpoint``, ``out_dir/checkpoints/last.ckpt`` is written atomically
    at every epoch end, holding everything an exact resumption needs (:mod:`dmtg_nas.runstate`).
    ``interrupts`` (active) makes SIGINT/SIGTERM save a checkpoint and raise
    :class:`~dmtg_nas.runstate.SearchInterrupted` at the next step.
    """
    strat = spec.strategy
    hw = strat.trainer
    if validate is None:
        validate = out_dir is not None or bool(callbacks) or strat.validates
    module = NniMultiTaskModule(
        spec.tasks,
        strat.optimizer,
        strat.lr_schedule,
        strat.epochs,
        strat.nonfinite,
        channels_last=hw.channels_last,
        compile=hw.compile,
    )
    loader: dict[str, Any] = {
        "num_workers": strat.num_workers,
        "pin_memory": use_pinned_memory(hw),
        "world_size": hw.world_size,
        "loader_cls": DataLoader,
    }
    train_loader = make_loader(data.train, strat.batch_size, shuffle=True, seed=strat.seed, **loader)
    val_loader = make_loader(  # NNI's one-shot strategies insist on one, even when unused
        data.val,
        strat.eval_batch_size or strat.batch_size,
        shuffle=False,
        **loader,  # type: ignore[arg-type]
    )
    cbs = list(callbacks)
    if strat.keep == "best":  # before the checkpoint callback: its snapshot goes into the epoch's checkpoint
        module.best_epoch = BestEpoch(BestEpoch.monitor_for(spec.tasks))
        cbs.append(module.best_epoch)
    saving = checkpoint and out_dir is not None
    if saving:
        assert out_dir is not None
        cbs.append(RunStateCallback(train_loader, module, spec_identity(spec)))
        # the latest state after every epoch (validation included), always as last.ckpt (with save_top_k=0,
        # Lightning would write save_last only when training ends)
        cbs.append(
            ModelCheckpoint(
                dirpath=out_dir / "checkpoints",
                filename="last",
                save_top_k=1,
                save_on_train_epoch_end=True,
                enable_version_counter=False,
            )
        )
    if interrupts is not None:
        ckpt = out_dir / "checkpoints" / "last.ckpt" if saving and out_dir is not None else None
        cbs.append(InterruptCallback(interrupts, interrupt_message(out_dir if saving else None, "search"), ckpt))
    cbs += user_callbacks(hw)
    cbs += stage_bars(progress, "search")
    with quiet_libraries():  # Lightning's banners as it builds the Trainer
        trainer = Trainer(
            max_epochs=strat.epochs,
            **trainer_kwargs(hw),
            callbacks=cbs,
            logger=search_logger(hw, out_dir, _log_version(out_dir, resume_from), spec.name)
            if out_dir is not None
            else False,
            enable_checkpointing=checkpoint and out_dir is not None,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=None if validate else 0,
            log_every_n_steps=1,
            gradient_clip_val=strat.gradient_clip,
            deterministic=True if strat.deterministic else None,
            plugins=[AtomicCheckpointIO()] if saving else None,
            default_root_dir=str(out_dir) if out_dir is not None else None,
        )
    fit_kwargs = {"ckpt_path": str(resume_from)} if resume_from is not None else None
    module.inputs = RunInputs(spec, data, out_dir)
    module.held_out_loader = val_loader  # strategy.bilevel: the logits' batches, validation run or not
    return Lightning(module, trainer, train_dataloaders=train_loader, val_dataloaders=val_loader, fit_kwargs=fit_kwargs)


def experiment_inputs(
    spec: SearchSpec, data: TaskData | None = None, out_dir: Path | None = None, *, progress: bool = False
) -> tuple[GroupingSpace, Lightning]:
    """The model space and the evaluator of ``spec`` for ``NasExperiment(space, evaluator, strategy)``
    (``data``: pre-loaded, default the spec's data set)."""
    data = data if data is not None else load_data(spec)
    space = GroupingSpace.from_spec(spec, data.input_shape)
    return space, build_evaluator(spec, data, out_dir, progress=progress)
