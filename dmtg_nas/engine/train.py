"""Training and evaluating one network: a plain multi-task network, or the network of a partition.

Every training takes the strategy's optimizer, learning-rate schedule, batch size, gradient
clipping, non-finite policy, determinism and devices (:class:`~dmtg_nas.schema.StrategyConfig`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch

from ..data import TaskData, make_loader
from ..errors import DmtgError
from ..hardware import eval_device, trainer_kwargs, use_pinned_memory, user_callbacks
from ..network import GroupedNetwork
from ..quiet import quiet_libraries
from ..schema import SearchSpec, StrategyConfig, TaskConfig
from ..tasks import TaskMetrics, summarize
from .bars import stage_bars
from .module import MultiTaskModule
from .networks import partition_network

__all__ = ["PerTask", "SplitMetrics", "evaluate", "evaluate_splits", "train_network", "train_partition"]

PerTask = dict[str, dict[str, float]]  # task -> metric -> value
SplitMetrics = dict[str, Any]  # {"val": PerTask, "test": PerTask, "totals": {split: totals}}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    tasks: Sequence[TaskConfig],
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    num_workers: int | str = 0,
) -> PerTask:
    """Per-task loss and metrics of a network returning ``{task: output}`` on a dataset.

    Runs in this process alone (in a distributed run every process evaluates the whole set)."""
    device = torch.device(device)
    metrics = TaskMetrics(tasks, sync=False).to(device)
    was_training = model.training
    model.eval().to(device)
    pin = device.type == "cuda"
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin, shard=False)
    for x, targets in loader:
        outputs = model(x.to(device, non_blocking=pin))
        metrics.update(outputs, {k: v.to(device, non_blocking=pin) for k, v in targets.items()})
    model.train(was_training)
    return metrics.compute()


def evaluate_splits(
    model: torch.nn.Module, data: TaskData, tasks: Sequence[TaskConfig], device: str | torch.device = "cpu"
) -> SplitMetrics:
    """The network's ``val`` and ``test`` rows and their ``totals``, as ``metrics.json`` holds them;
    the network is moved back to the CPU."""
    per_split = {split: evaluate(model, getattr(data, split), tasks, device=device) for split in ("val", "test")}
    model.cpu()
    return {**per_split, "totals": {split: summarize(per_split[split], tasks) for split in per_split}}


def train_network(
    model: torch.nn.Module,
    data: TaskData,
    tasks: Sequence[TaskConfig],
    strategy: StrategyConfig,
    epochs: int,
    *,
    lr: float | None = None,
    progress: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    skipped: list[dict[str, Any]] | None = None,
    stage: str = "training",
) -> torch.nn.Module:
    """Train a plain multi-task network (e.g. the pruned grouped network) with the strategy's
    optimizer, learning-rate schedule, batch size, gradient clipping, non-finite policy and
    determinism. Batches skipped for a non-finite loss are appended to ``skipped``. ``progress``:
    a bar on stderr named ``stage``; the libraries' harmless notices are silenced
    (:func:`~dmtg_nas.quiet.quiet_libraries`)."""
    optimizer = strategy.optimizer.model_copy(update={"lr": lr or strategy.optimizer.lr, "logits_lr": None})
    hw = strategy.trainer
    module = MultiTaskModule(
        tasks,
        optimizer,
        strategy.lr_schedule,
        epochs,
        strategy.nonfinite,
        channels_last=hw.channels_last,
        compile=hw.compile,
    )
    module.set_model(model)
    # the validation loss is read only by the plateau schedule on it; else no validation between epochs
    # (nothing here keeps per-epoch curves, and the caller evaluates the trained network itself)
    validate = strategy.lr_schedule.reads_val_loss
    with quiet_libraries():
        _fit(module, data, strategy, epochs, validate, progress, [*callbacks, *stage_bars(progress, stage)])
    if skipped is not None:
        skipped.extend(module.nonfinite_skips)
    return model


def _fit(
    module: MultiTaskModule,
    data: TaskData,
    strategy: StrategyConfig,
    epochs: int,
    validate: bool,
    progress: bool,
    callbacks: Sequence[pl.Callback],
) -> None:
    """Build the Trainer of :func:`train_network` and fit ``module`` on the data's training split."""
    hw = strategy.trainer
    trainer = pl.Trainer(
        max_epochs=epochs,
        **trainer_kwargs(hw),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0,
        gradient_clip_val=strategy.gradient_clip,
        deterministic=True if strategy.deterministic else None,
        callbacks=[*callbacks, *user_callbacks(hw)],
    )
    loader: dict[str, Any] = {
        "num_workers": strategy.num_workers,
        "pin_memory": use_pinned_memory(hw),
        "world_size": hw.world_size,
    }
    train_loader = make_loader(data.train, strategy.batch_size, shuffle=True, seed=strategy.seed + 1, **loader)
    eval_bs = strategy.eval_batch_size or strategy.batch_size
    val_loader = make_loader(data.val, eval_bs, shuffle=False, **loader) if validate else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
        trainer.fit(module, train_loader, val_loader)


def train_partition(
    spec: SearchSpec,
    data: TaskData,
    groups: Sequence[Sequence[str]],
    *,
    epochs: int | None = None,
    progress: bool = False,
    callbacks: Sequence[pl.Callback] = (),
    stage: str = "training",
) -> tuple[GroupedNetwork, SplitMetrics]:
    """Train a given partition of the tasks from scratch (one fresh branch per group).

    Uses the spec's encoder, heads, optimizer, batch size and seed; ``epochs`` defaults to the
    search's budget (``strategy.epochs + strategy.finetune.epochs``). Returns the trained network
    and its metrics (``val``, ``test``, ``totals``), as ``run_search`` reports them.
    """
    names = [t for g in groups for t in g]
    if sorted(names) != sorted(spec.task_names):
        raise DmtgError(f"groups {list(map(list, groups))} are not a partition of the tasks {spec.task_names}")
    strat = spec.strategy
    pl.seed_everything(strat.seed, workers=True, verbose=False)
    model = partition_network(spec, groups, data.input_shape)
    budget = epochs or strat.epochs + strat.finetune.epochs
    train_network(model, data, spec.tasks, strat, budget, progress=progress, callbacks=callbacks, stage=stage)
    return model, evaluate_splits(model, data, spec.tasks, eval_device(strat.trainer))
