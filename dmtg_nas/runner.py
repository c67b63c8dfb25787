"""Run a grouping search end to end: data, supernet, DMTG strategy, export, metrics and outputs.

``run_search(spec, out_dir)`` drives the NNI strategy directly (the same :class:`~dmtg_nas.strategy.DMTG`
that ``NasExperiment`` runs) and writes, under ``out_dir``:

- ``grouping.json``: groups, assignment, final branch probabilities, K;
- ``metrics.json``: per-task validation and test loss and metrics, totals, timings,
  (for data sets with a known partition) the adjusted Rand index against it, and (with a
  ``reference`` in the spec) normalized gain and Delta_m against the reference results;
- ``history.json`` and ``probabilities.png``: each task's branch probabilities over the epochs;
- ``config.yaml``: the resolved spec; ``model.pt``: the grouped network;
- ``checkpoints/last.ckpt``: the search checkpoint, written atomically at every epoch end and on
  SIGINT/SIGTERM, with the one before it as ``checkpoints/last.prev.ckpt`` (``resume=True`` continues
  from them, exactly; see :mod:`dmtg_nas.runstate`);
- ``warmstart.json``: the warm start's clusters and affinity (reused by a resumed run);
- ``.lock``: held (``flock``) by the run writing into the folder;
- ``planted_groups.json`` when the data set knows its best partition; ``logs/metrics.csv``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint

from .components import load_data
from .config import SearchSpec, StrategyConfig, TaskConfig
from .data import TaskData, make_loader
from .errors import DmtgError, NonFiniteLossError, SearchInterrupted
from .hardware import barrier, eval_device, is_global_zero, trainer_kwargs, use_pinned_memory
from .runlock import RunLock
from .runstate import (
    AtomicCheckpointIO,
    InterruptCallback,
    Interrupts,
    RunStateCallback,
    select_checkpoint,
)
from .space import GroupedNetwork, GroupingSpace, groups_from_sample
from .tasks import TaskMetrics, summarize
from .training import MultiTaskModule

__all__ = [
    "SearchResult",
    "adjusted_rand_index",
    "build_evaluator",
    "evaluate",
    "retrain",
    "run_search",
    "train_network",
    "train_partition",
]

_logger = logging.getLogger(__name__)

OUTPUT_FILES = ("grouping.json", "metrics.json", "config.yaml", "model.pt", "history.json", "probabilities.png")


@dataclass
class SearchResult:
    """What a search produced (also written to ``out_dir``)."""

    groups: list[list[str]]
    assignment: dict[str, int]
    probabilities: dict[str, list[float]]
    num_branches: int
    model: GroupedNetwork
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    ground_truth: list[list[str]] | None = None


class ProbabilityHistory(pl.Callback):
    """Records every task's branch probabilities (and tau, val loss) at the start and each epoch end.

    With ``validated`` (the search validates each epoch) a record is taken after the epoch's
    validation, with its ``val_loss``; else at the end of the epoch's training, ``val_loss`` None.
    """

    def __init__(self, validated: bool = True) -> None:
        self.records: list[dict[str, Any]] = []
        self.validated = validated

    def _record(self, trainer: pl.Trainer, module: Any, epoch: int) -> None:
        val = trainer.callback_metrics.get("val_loss")
        self.records.append(
            {
                "epoch": epoch,
                "tau": float(getattr(module, "current_tau", float("nan"))),
                "val_loss": float(val) if val is not None else None,
                "probabilities": module.probabilities(),
            }
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not self.records:
            self._record(trainer, pl_module, 0)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # after the module's epoch-end logging: callback_metrics hold this epoch's val_loss
        # (and the record is in the epoch's checkpoint, which ModelCheckpoint writes after this)
        if self.validated and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._record(trainer, pl_module, trainer.current_epoch + 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not self.validated:
            self._record(trainer, pl_module, trainer.current_epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))


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
    out_dir: Path | None,
    *,
    progress: bool = True,
    callbacks: Sequence[pl.Callback] = (),
    checkpoint: bool = True,
    resume_from: Path | None = None,
    interrupts: Interrupts | None = None,
    validate: bool = True,
) -> Any:
    """NNI's Lightning evaluator for the spec: the multi-task module, a traced Trainer and loaders.

    ``validate``: run a validation pass after every epoch (the logged ``val_loss`` and per-task
    curves, the plateau schedule, callbacks that read them); False: none.

    With ``out_dir`` and ``checkpoint``, ``out_dir/checkpoints/last.ckpt`` is written atomically
    at every epoch end, holding everything an exact resumption needs (:mod:`dmtg_nas.runstate`).
    ``interrupts`` (active) makes SIGINT/SIGTERM save a checkpoint and raise
    :class:`~dmtg_nas.runstate.SearchInterrupted` at the next step.
    """
    from nni.nas.evaluator.pytorch import Lightning, Trainer
    from pytorch_lightning.loggers import CSVLogger

    strat = spec.strategy
    hw = strat.trainer
    module = MultiTaskModule(
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
    }
    train_loader = make_loader(data.train, strat.batch_size, shuffle=True, seed=strat.seed, **loader)
    val_loader = make_loader(  # NNI's one-shot strategies insist on one, even when unused
        data.val,
        strat.eval_batch_size or strat.batch_size,
        shuffle=False,
        **loader,  # type: ignore[arg-type]
    )
    cbs = list(callbacks)
    saving = checkpoint and out_dir is not None
    if saving:
        assert out_dir is not None
        cbs.append(RunStateCallback(train_loader, module))
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
        cbs.append(InterruptCallback(interrupts, _interrupt_message(out_dir if saving else None, "search"), ckpt))
    trainer = Trainer(
        max_epochs=strat.epochs,
        **trainer_kwargs(hw),
        callbacks=cbs,
        logger=CSVLogger(save_dir=str(out_dir), name="", version=_log_version(out_dir, resume_from))
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
    return Lightning(module, trainer, train_dataloaders=train_loader, val_dataloaders=val_loader, fit_kwargs=fit_kwargs)


def _interrupt_message(out_dir: Path | None, phase: str) -> Any:
    """``describe(signal_name, saved)`` for :class:`SearchInterrupted` in a phase of the run."""

    def describe(sig: str, saved: str | None) -> str:
        if out_dir is None:
            return f"interrupted by {sig} during the {phase} (no output folder: nothing saved)"
        resume = f"dmtg search --resume {out_dir}"
        if phase == "search":
            ckpt = out_dir / "checkpoints" / "last.ckpt"
            return f"interrupted by {sig}: checkpoint saved at {saved} in {ckpt}; continue with: {resume}"
        if phase == "warm start":
            return (
                f"interrupted by {sig} during the warm start, before the first checkpoint; start again with "
                f"--out {out_dir} --overwrite"
            )
        ckpt = out_dir / "checkpoints" / "last.ckpt"
        again = "the fine-tune and evaluation run" if phase == "fine-tune" else "the evaluation runs"
        return (
            f"interrupted by {sig} during the {phase}: the finished search is in {ckpt}; "
            f"continue with: {resume} ({again} again)"
        )

    return describe


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    tasks: Sequence[TaskConfig],
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    num_workers: int | str = 0,
) -> dict[str, dict[str, float]]:
    """Per-task loss and metrics of a network returning ``{task: output}`` on a dataset.

    Runs in this process alone (in a distributed run every process evaluates the whole set)."""
    device = torch.device(device)
    metrics = TaskMetrics(tasks, sync=False).to(device)
    was_training = model.training
    model.eval().to(device)
    pin = device.type == "cuda"
    loader = make_loader(
        dataset, batch_size, shuffle=False, traced=False, num_workers=num_workers, pin_memory=pin, shard=False
    )
    for x, targets in loader:
        outputs = model(x.to(device, non_blocking=pin))
        metrics.update(outputs, {k: v.to(device, non_blocking=pin) for k, v in targets.items()})
    model.train(was_training)
    return metrics.compute()


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
) -> torch.nn.Module:
    """Train a plain multi-task network (e.g. the pruned grouped network) with the strategy's
    optimizer, learning-rate schedule, batch size, gradient clipping, non-finite policy and
    determinism. Batches skipped for a non-finite loss are appended to ``skipped``."""
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
    # the validation loss is read only by the plateau schedule; else no validation between epochs
    # (nothing here keeps per-epoch curves, and the caller evaluates the trained network itself)
    validate = strategy.lr_schedule.name == "plateau"
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
        callbacks=list(callbacks),
    )
    loader: dict[str, Any] = {
        "num_workers": strategy.num_workers,
        "pin_memory": use_pinned_memory(hw),
        "world_size": hw.world_size,
        "traced": False,
    }
    train_loader = make_loader(data.train, strategy.batch_size, shuffle=True, seed=strategy.seed + 1, **loader)
    eval_bs = strategy.eval_batch_size or strategy.batch_size
    val_loader = make_loader(data.val, eval_bs, shuffle=False, **loader) if validate else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
        trainer.fit(module, train_loader, val_loader)
    if skipped is not None:
        skipped.extend(module.nonfinite_skips)
    return model


def train_partition(
    spec: SearchSpec,
    data: TaskData,
    groups: Sequence[Sequence[str]],
    *,
    epochs: int | None = None,
    progress: bool = False,
) -> tuple[GroupedNetwork, dict[str, Any]]:
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
    space = GroupingSpace(spec.tasks, len(groups), spec.backbone, spec.heads, data.input_shape, "independent")
    model = space.freeze({t: i for i, g in enumerate(groups) for t in g})
    train_network(model, data, spec.tasks, strat, epochs or strat.epochs + strat.finetune.epochs, progress=progress)
    device = eval_device(strat.trainer)
    per_split = {split: evaluate(model, getattr(data, split), spec.tasks, device=device) for split in ("val", "test")}
    model.cpu()
    totals = {split: summarize(per_split[split], spec.tasks) for split in per_split}
    return model, {**per_split, "totals": totals}


def adjusted_rand_index(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> float:
    """Adjusted Rand index between two partitions of the same tasks (1.0 = identical)."""
    from sklearn.metrics import adjusted_rand_score

    names = sorted(t for g in truth for t in g)
    label_found = {t: i for i, g in enumerate(found) for t in g}
    label_truth = {t: i for i, g in enumerate(truth) for t in g}
    return float(adjusted_rand_score([label_truth[t] for t in names], [label_found[t] for t in names]))


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool, lock: RunLock) -> Path | None:
    """Lock and create the run directory; returns the checkpoint to resume from, if any."""
    if resume:
        if not out_dir.is_dir():
            raise DmtgError(f"{out_dir}: nothing to resume (no such folder)")
        lock.acquire()
        return select_checkpoint(out_dir / "checkpoints" / "last.ckpt")
    if out_dir.is_dir():
        lock.acquire()  # a live run in the folder is reported as such
        if any(p.name != lock.path.name for p in out_dir.iterdir()):
            if not overwrite:
                raise DmtgError(
                    f"{out_dir} already exists and is not empty; choose another output folder or overwrite it"
                )
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # never resume into an older run
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    return None


def run_search(
    spec: SearchSpec,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    data: TaskData | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> SearchResult:
    """Search the task grouping of ``spec`` and train the grouped network.

    While it runs, the process holds a lock on ``out_dir`` (a second run into it is refused),
    SIGINT and SIGTERM stop it at the next step with a resumable checkpoint
    (:class:`~dmtg_nas.runstate.SearchInterrupted`), and a non-finite loss follows
    ``strategy.nonfinite``.

    Args:
        spec: a validated spec (:func:`dmtg_nas.load_spec`).
        out_dir: where to write the outputs (None: write nothing, keep everything in memory).
        progress: show Lightning's progress bar.
        resume: continue an interrupted search from ``out_dir/checkpoints/last.ckpt`` (or the
            previous checkpoint when that one is damaged).
        overwrite: allow writing into a non-empty ``out_dir``.
        data: pre-loaded data (default: load the spec's data set).
        callbacks: extra Lightning callbacks for the search.

    The search validates after every epoch (``logs/metrics.csv``, the history's ``val_loss``) when
    it writes ``out_dir``, when ``callbacks`` are given (they may read the validation) or with the
    plateau schedule; otherwise nothing would read it and it is skipped (the history is then
    recorded at each epoch's end with ``val_loss`` None; the trained weights are the same).
    """
    out = Path(out_dir) if out_dir is not None else None
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with contextlib.ExitStack() as stack:
        lock = RunLock(out) if out is not None and is_global_zero() else None
        if lock is not None:
            stack.callback(lock.release)
        interrupts = stack.enter_context(Interrupts())
        # Lightning's `deterministic=True` switches the global flag on: leave it as it was found
        stack.callback(torch.use_deterministic_algorithms, deterministic[0], warn_only=deterministic[1])
        return _run_search(spec, out, lock, interrupts, progress, resume, overwrite, data, callbacks)
    raise AssertionError("unreachable")  # pragma: no cover


def _last_good(out: Path | None) -> str:
    ckpt = out / "checkpoints" / "last.ckpt" if out is not None else None
    if ckpt is None or not ckpt.is_file():
        return "no checkpoint was written yet"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    return f"the last good checkpoint is kept: {ckpt} (epoch {saved['epoch']}, step {saved['global_step']})"


def _run_search(
    spec: SearchSpec,
    out: Path | None,
    lock: RunLock | None,
    interrupts: Interrupts,
    progress: bool,
    resume: bool,
    overwrite: bool,
    data: TaskData | None,
    callbacks: Sequence[pl.Callback],
) -> SearchResult:
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.space import RawFormatModelSpace

    from .strategy import DMTG
    from .warmstart import WarmStart

    strat = spec.strategy
    pl.seed_everything(strat.seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    data = data if data is not None else load_data(spec)  # bad data fails before anything is written
    if out is None:
        resume_from = None
    elif lock is not None:  # the one process that writes (rank 0 of a distributed run) holds the lock
        resume_from = _prepare_out_dir(out, resume, overwrite, lock)
    else:  # the other processes of a distributed run: rank 0 has prepared the folder
        resume_from = out / "checkpoints" / "last.ckpt" if resume else None
    if out is not None and not resume and is_global_zero():
        (out / "config.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False), encoding="utf-8")
    warm: WarmStart | None = None
    # the warm start clusters tasks into K groups: nothing to decide with K = 1 or K >= N;
    # a resumed run has its logits in the checkpoint (and the warm start's record in warmstart.json)
    if strat.warmup.method == "attribution" and 1 < spec.groups < len(spec.tasks):
        if resume_from is None:
            from .warmstart import attribution_warm_start

            stop = InterruptCallback(interrupts, _interrupt_message(out, "warm start"))
            warm = attribution_warm_start(spec, data, progress=progress, callbacks=[stop])
            if out is not None and is_global_zero():
                _write_json(out / "warmstart.json", warm.to_dict())
            pl.seed_everything(strat.seed, workers=True, verbose=False)
        elif out is not None and (out / "warmstart.json").is_file():
            warm = WarmStart.from_dict(json.loads((out / "warmstart.json").read_text(encoding="utf-8")))
    # a validation pass after every epoch only where something reads it: the run's logs and
    # checkpoints, the plateau schedule, or the caller's callbacks (e.g. a tuner's pruning)
    validate = out is not None or bool(callbacks) or strat.lr_schedule.name == "plateau"
    history = ProbabilityHistory(validated=validate)
    space = GroupingSpace.from_spec(spec, data.input_shape)
    evaluator = build_evaluator(
        spec,
        data,
        out,
        progress=progress,
        callbacks=[history, *callbacks],
        resume_from=resume_from,
        interrupts=interrupts,
        validate=validate,
    )
    initial = None
    if warm is not None and resume_from is None:
        rows = warm.logits(spec.groups, strat.init.logits, strat.warmup.strength)
        initial = dict(zip(spec.task_names, rows))
    strategy = DMTG.from_config(strat, initial)
    t_search = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # the training data order is resumed by RunStateCallback, not by the loader itself
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch")
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            warnings.filterwarnings("ignore", message="`training_step` returned `None`")  # nonfinite: skip
            strategy(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine(continue_on_failure=False))
    except NonFiniteLossError as exc:
        hint = "strategy.nonfinite: skip skips such batches; strategy.gradient_clip may help"
        detail = f"the search stopped: {_last_good(out)} ({hint})"
        raise NonFiniteLossError(exc.tasks, exc.step, exc.epoch, exc.values, detail) from None
    search_time = time.perf_counter() - t_search + (warm.seconds if warm is not None and resume_from is None else 0.0)
    oneshot = strategy.dmtg_module
    if interrupts.signum is not None:  # the signal came after the search's last step
        phase = "fine-tune" if strat.finetune.epochs > 0 else "evaluation"
        raise SearchInterrupted(_interrupt_message(out, phase)(interrupts.name, None), interrupts.signum)
    sample = oneshot.export()
    probabilities = oneshot.probabilities()
    skipped = [{"phase": "search", **r} for r in oneshot.training_module.nonfinite_skips]
    t_finetune = time.perf_counter()
    device = eval_device(strat.trainer)
    dense = any(t.dense for t in spec.tasks)  # per-pixel outputs: keep evaluation batches at the training size
    eval_bs = strat.eval_batch_size or (strat.batch_size if dense else max(strat.batch_size, 256))

    def build(chosen: Mapping[str, int], init: str = strat.finetune.init) -> GroupedNetwork:
        if init == "scratch":
            fresh = GroupingSpace(spec.tasks, spec.groups, spec.backbone, spec.heads, data.input_shape, "independent")
            return fresh.freeze(chosen)
        return space.freeze(chosen)

    def finetune(net: torch.nn.Module, epochs: int, lr: float | None = strat.finetune.lr) -> None:
        if epochs <= 0:
            return
        stop = InterruptCallback(interrupts, _interrupt_message(out, "fine-tune"))
        finetune_skips: list[dict[str, Any]] = []
        try:
            train_network(
                net,
                data,
                spec.tasks,
                strat,
                epochs,
                lr=lr,
                progress=progress,
                callbacks=[stop],
                skipped=finetune_skips,
            )
        except NonFiniteLossError as exc:
            detail = "the fine-tune stopped (the search before it is complete in its checkpoint)"
            raise NonFiniteLossError(exc.tasks, exc.step, exc.epoch, exc.values, detail) from None
        skipped.extend({"phase": "fine-tune", **r} for r in finetune_skips)
        if interrupts.signum is not None:  # stop before the evaluation
            raise SearchInterrupted(_interrupt_message(out, "evaluation")(interrupts.name, None), interrupts.signum)

    def evaluate_split(net: torch.nn.Module, split: str) -> dict[str, dict[str, float]]:
        rows = evaluate(net, getattr(data, split), spec.tasks, eval_bs, device, strat.num_workers)
        net.cpu()
        return rows

    model = build(sample)
    finetune(model, strat.finetune.epochs)
    ls = strat.local_search
    wanted = ls.enabled is True or (ls.enabled == "auto" and len(spec.tasks) > 1)
    local_record = _local_search_skipped(spec, data, sample) if wanted else None
    search_val: dict[str, dict[str, float]] | None = None  # the search network's validation rows, if evaluated
    if wanted and local_record is None and len(spec.tasks) > 1:
        from .localsearch import local_search, masks_of, scorer_for

        names = spec.task_names
        scorer = scorer_for(spec, data, ls.replicates)
        outcome = local_search(
            masks_of(groups_from_sample(names, sample, spec.groups), names),
            scorer,
            spec.groups,
            margin=ls.margin,
            max_candidates=ls.max_candidates,
            rounds=ls.rounds,
            moves=ls.moves,
            merge_splits=ls.merge_splits,
            splits=ls.splits,
            confirm=ls.confirm,
            affinity=warm.affinity if warm is not None else None,
        )
        local_record = outcome.to_dict(names)
        if outcome.changed:
            sample = _branches_kept(local_record["groups"], sample, spec.groups)
        # the final model: the group networks the check trained (each from scratch with the search's
        # budget; per group the training with the lowest validation loss) where they form the final
        # grouping, when they beat the search's network on validation or the grouping changed; else
        # the search's network
        networks, networks_val = scorer.best_networks(outcome.partition) or ({}, math.inf)
        assembled = _assemble(space.architecture, sample, networks, names)  # None where a group has none
        if not outcome.changed and assembled is not None:
            search_val = evaluate_split(model, "val")
        if outcome.changed or (
            search_val is not None and networks_val < summarize(search_val, spec.tasks)["weighted_loss"]
        ):
            local_record["final_model"] = "group networks"
            if assembled is None:  # e.g. a shared stem: the chosen grouping trained from scratch
                pl.seed_everything(strat.seed, workers=True, verbose=False)
                assembled = build(sample, "scratch")
                finetune(assembled, strat.epochs + strat.finetune.epochs, lr=None)
                local_record["final_model"] = "retrained"
            model, search_val = assembled, None
        else:
            local_record["final_model"] = "search"
    finetune_time = time.perf_counter() - t_finetune
    per_split = {"val": search_val or evaluate_split(model, "val"), "test": evaluate_split(model, "test")}
    groups = groups_from_sample(spec.task_names, sample, spec.groups)
    metrics: dict[str, Any] = {
        "val": per_split["val"],
        "test": per_split["test"],
        "totals": {split: summarize(per_split[split], spec.tasks) for split in per_split},
        "search": {
            "epochs": strat.epochs,
            "finetune_epochs": strat.finetune.epochs,
            "search_seconds": round(search_time, 3),
            "finetune_seconds": round(finetune_time, 3),
            "total_seconds": round(time.perf_counter() - t0, 3),
            "num_branches": spec.groups,
            "branches_used": len(groups),
            "data_sizes": data.sizes(),
            "resumed": resume_from is not None,
        },
        "nonfinite": {"policy": strat.nonfinite, "skipped_batches": len(skipped), "batches": skipped[:100]},
    }
    if local_record is not None:
        metrics["local_search"] = local_record
    if warm is not None:
        metrics["warmup"] = {
            "method": strat.warmup.method,
            "clusters": groups_from_sample(spec.task_names, dict(zip(spec.task_names, warm.clusters)), spec.groups),
            "affinity": warm.affinity,
            "seconds": round(warm.seconds, 3),
        }

    if spec.reference is not None:
        from .metrics import compare_to_reference, load_reference

        refs = [spec.reference] if isinstance(spec.reference, str) else list(spec.reference)
        comparison = compare_to_reference(per_split, load_reference(refs), spec.tasks)
        metrics["reference"] = {"files": refs, **comparison}
    if data.ground_truth is not None:
        metrics["ground_truth"] = {
            "groups": data.ground_truth,
            "adjusted_rand_index": adjusted_rand_index(groups, data.ground_truth),
            "exact": sorted(map(sorted, groups)) == sorted(map(sorted, data.ground_truth)),
        }
    result = SearchResult(
        groups=groups,
        assignment={name: int(sample[name]) for name in spec.task_names},
        probabilities=probabilities,
        num_branches=spec.groups,
        model=model,
        metrics=metrics,
        history=history.records,
        out_dir=out,
        ground_truth=data.ground_truth,
    )
    if out is not None and is_global_zero():
        write_outputs(result, spec, data)
    barrier()  # a distributed run ends when every process has finished
    return result


def _local_search_skipped(spec: SearchSpec, data: TaskData, sample: Mapping[str, int]) -> dict[str, str] | None:
    """Why the merge check does not run on this search (its record in metrics.json), or None."""
    ls = spec.strategy.local_search
    if ls.enabled == "auto":
        from .baselines import trains_batched

        if not trains_batched(spec, data):
            return {"skipped": "auto: the group networks of this encoder and data would train one by one"}
    if len(set(sample.values())) == 1 and not (ls.moves and spec.groups > 1):
        return {"skipped": "one group: nothing to merge"}
    return None


def _assemble(
    architecture: Mapping[str, Any],
    sample: Mapping[str, int],
    networks: Mapping[int, torch.nn.Module],
    task_names: Sequence[str],
) -> GroupedNetwork | None:
    """The grouped network of ``sample`` made of trained one-group networks (``{task mask: network}``,
    each a one-branch grouped network), or None when a group has none or they have their own stems."""
    used = sorted({int(b) for b in sample.values()})
    branches: list[torch.nn.Module] = []
    heads: dict[str, torch.nn.Module] = {}
    for b in used:
        group = [t for t in task_names if int(sample[t]) == b]
        net = networks.get(sum(1 << task_names.index(t) for t in group))
        if not isinstance(net, GroupedNetwork) or net.stem is not None:
            return None
        branches.append(copy.deepcopy(net.branches[0]))
        heads.update({t: copy.deepcopy(net.heads[net.task_names.index(t)]) for t in group})
    assignment = {t: used.index(int(sample[t])) for t in task_names}
    return GroupedNetwork(architecture, branches, heads, assignment, branch_ids=used)


def _branches_kept(groups: Sequence[Sequence[str]], found: Mapping[str, int], num_branches: int) -> dict[str, int]:
    """A sample for ``groups`` that keeps the search's branch indices where it can: each group (the
    largest first) takes the branch most of its tasks had, if still free, else the lowest free one."""
    taken: set[int] = set()
    sample: dict[str, int] = {}
    for group in sorted(groups, key=len, reverse=True):
        votes = Counter(int(found[t]) for t in group)
        free = [b for b, _ in sorted(votes.items(), key=lambda v: (-v[1], v[0])) if b not in taken]
        branch = free[0] if free else min(set(range(num_branches)) - taken)
        taken.add(branch)
        sample.update({t: branch for t in group})
    return sample


def write_outputs(result: SearchResult, spec: SearchSpec, data: TaskData) -> None:
    """Write every output file of a finished search into ``result.out_dir``."""
    out = result.out_dir
    assert out is not None
    _write_json(
        out / "grouping.json",
        {
            "groups": result.groups,
            "assignment": result.assignment,
            "probabilities": result.probabilities,
            "num_branches": result.num_branches,
        },
    )
    _write_json(out / "metrics.json", result.metrics)
    _write_json(out / "history.json", result.history)
    result.model.save(out / "model.pt")
    if data.ground_truth is not None:
        _write_json(out / "planted_groups.json", {"groups": data.ground_truth})
    from .plots import plot_probabilities

    plot_probabilities(result.history, spec.task_names, out / "probabilities.png", assignment=result.assignment)


def _write_json(path: Path, payload: Mapping[str, Any] | list[Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def retrain(
    run_dir: str | Path,
    *,
    init: str = "scratch",
    epochs: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Train the grouped network of a finished search to completion and report test metrics.

    Args:
        run_dir: a search output folder (``config.yaml``, ``grouping.json``, ``model.pt``).
        init: ``scratch`` (fresh weights, one branch per group) or ``search`` (continue from the
            search's pruned network).
        epochs: training epochs (default: the search's ``epochs + finetune.epochs``).
        out_dir: where to write ``metrics.json`` and ``model.pt`` (default: ``run_dir/retrain``).
        overrides: ``dotted.key=value`` changes to the search's spec (e.g. ``strategy.trainer.devices=2``).

    Returns:
        the metrics (``val``, ``test``, ``totals``, ``retrain``).
    """
    from .config import load_spec
    from .space import load_model

    run = Path(run_dir)
    for name in ("config.yaml", "grouping.json"):
        if not (run / name).is_file():
            raise DmtgError(f"{run}: not a finished search (no {name})")
    if init not in ("scratch", "search"):
        raise DmtgError(f"init must be 'scratch' or 'search', got {init!r}")
    spec = load_spec(run / "config.yaml", overrides)
    groups = json.loads((run / "grouping.json").read_text())["groups"]
    out = Path(out_dir) if out_dir is not None else run / "retrain"
    data = load_data(spec)
    budget = epochs or spec.strategy.epochs + spec.strategy.finetune.epochs
    t0 = time.perf_counter()
    if init == "scratch":
        model, metrics = train_partition(spec, data, groups, epochs=budget, progress=progress)
    else:
        model = load_model(run / "model.pt")
        pl.seed_everything(spec.strategy.seed, workers=True, verbose=False)
        train_network(model, data, spec.tasks, spec.strategy, budget, progress=progress)
        device = eval_device(spec.strategy.trainer)
        per_split = {
            split: evaluate(model, getattr(data, split), spec.tasks, device=device) for split in ("val", "test")
        }
        model.cpu()
        metrics = {**per_split, "totals": {s: summarize(per_split[s], spec.tasks) for s in per_split}}
    metrics["retrain"] = {"init": init, "epochs": budget, "groups": groups, "seconds": time.perf_counter() - t0}
    if is_global_zero():
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "metrics.json", metrics)
        model.save(out / "model.pt")
    barrier()
    return metrics
