"""Run a grouping search end to end: data, supernet, DMTG strategy, export, metrics and outputs.

``run_search(spec, out_dir)`` drives the NNI strategy directly (the same :class:`~dmtg_nas.strategy.DMTG`
that ``NasExperiment`` runs) and writes, under ``out_dir``:

- ``grouping.json``: groups, assignment, final branch probabilities, K;
- ``metrics.json``: per-task validation and test loss and metrics, totals, timings,
  (for data sets with a known partition) the adjusted Rand index against it, and (with a
  ``reference`` in the spec) normalized gain and Delta_m against the reference results;
- ``history.json`` and ``probabilities.png``: each task's branch probabilities over the epochs;
- ``config.yaml``: the resolved spec; ``model.pt``: the grouped network;
- ``checkpoints/last.ckpt``: the search checkpoint (``resume=True`` continues from it);
- ``planted_groups.json`` when the data set knows its best partition; ``logs/metrics.csv``.
"""

from __future__ import annotations

import json
import logging
import time
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
from .errors import DmtgError
from .hardware import barrier, eval_device, is_global_zero, trainer_kwargs, use_pinned_memory
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
    """Records every task's branch probabilities (and tau, val loss) at the start and each epoch end."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

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

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
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
) -> Any:
    """NNI's Lightning evaluator for the spec: the multi-task module, a traced Trainer and loaders."""
    from nni.nas.evaluator.pytorch import Lightning, Trainer
    from pytorch_lightning.loggers import CSVLogger

    strat = spec.strategy
    hw = strat.trainer
    module = MultiTaskModule(
        spec.tasks, strat.optimizer, strat.lr_schedule, strat.epochs, channels_last=hw.channels_last, compile=hw.compile
    )
    cbs = list(callbacks)
    if checkpoint and out_dir is not None:
        cbs.append(ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0))
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
        log_every_n_steps=1,
        gradient_clip_val=strat.gradient_clip,
        default_root_dir=str(out_dir) if out_dir is not None else None,
    )
    loader: dict[str, Any] = {
        "num_workers": strat.num_workers,
        "pin_memory": use_pinned_memory(hw),
        "world_size": hw.world_size,
    }
    train_loader = make_loader(data.train, strat.batch_size, shuffle=True, seed=strat.seed, **loader)
    val_loader = make_loader(data.val, strat.eval_batch_size or strat.batch_size, shuffle=False, **loader)
    fit_kwargs = {"ckpt_path": str(resume_from)} if resume_from is not None else None
    return Lightning(module, trainer, train_dataloaders=train_loader, val_dataloaders=val_loader, fit_kwargs=fit_kwargs)


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
    loader = make_loader(dataset, batch_size, shuffle=False, traced=False, num_workers=num_workers, pin_memory=pin)
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
) -> torch.nn.Module:
    """Train a plain multi-task network (e.g. the pruned grouped network) with the strategy's
    optimizer, learning-rate schedule and batch size."""
    optimizer = strategy.optimizer.model_copy(update={"lr": lr or strategy.optimizer.lr, "logits_lr": None})
    hw = strategy.trainer
    module = MultiTaskModule(
        tasks, optimizer, strategy.lr_schedule, epochs, channels_last=hw.channels_last, compile=hw.compile
    )
    module.set_model(model)
    trainer = pl.Trainer(
        max_epochs=epochs,
        **trainer_kwargs(hw),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=strategy.gradient_clip,
        callbacks=list(callbacks),
    )
    loader: dict[str, Any] = {
        "num_workers": strategy.num_workers,
        "pin_memory": use_pinned_memory(hw),
        "world_size": hw.world_size,
        "traced": False,
    }
    trainer.fit(
        module,
        make_loader(data.train, strategy.batch_size, shuffle=True, seed=strategy.seed + 1, **loader),
        make_loader(data.val, strategy.eval_batch_size or strategy.batch_size, shuffle=False, **loader),
    )
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


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Create the run directory; returns the checkpoint to resume from, if any."""
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not ckpt.is_file():
            raise DmtgError(f"{out_dir}: nothing to resume (no checkpoints/last.ckpt)")
        return ckpt
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DmtgError(f"{out_dir} already exists and is not empty; choose another output folder or overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
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

    Args:
        spec: a validated spec (:func:`dmtg_nas.load_spec`).
        out_dir: where to write the outputs (None: write nothing, keep everything in memory).
        progress: show Lightning's progress bar.
        resume: continue an interrupted search from ``out_dir/checkpoints/last.ckpt``.
        overwrite: allow writing into a non-empty ``out_dir``.
        data: pre-loaded data (default: load the spec's data set).
        callbacks: extra Lightning callbacks for the search.
    """
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.space import RawFormatModelSpace

    from .strategy import DMTG

    out = Path(out_dir) if out_dir is not None else None
    strat = spec.strategy
    pl.seed_everything(strat.seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    data = data if data is not None else load_data(spec)
    if out is None:
        resume_from = None
    elif is_global_zero():
        resume_from = _prepare_out_dir(out, resume, overwrite)
    else:  # the other processes of a distributed run: rank 0 has prepared the folder
        resume_from = out / "checkpoints" / "last.ckpt" if resume else None
    if out is not None and not resume and is_global_zero():
        (out / "config.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False), encoding="utf-8")
    warm = None
    # the warm start clusters tasks into K groups: nothing to decide with K = 1 or K >= N;
    # a resumed run has its logits already
    if strat.warmup.method == "attribution" and 1 < spec.groups < len(spec.tasks) and resume_from is None:
        from .warmstart import attribution_warm_start

        warm = attribution_warm_start(spec, data, progress=progress)
        pl.seed_everything(strat.seed, workers=True, verbose=False)
    history = ProbabilityHistory()
    space = GroupingSpace.from_spec(spec, data.input_shape)
    evaluator = build_evaluator(
        spec, data, out, progress=progress, callbacks=[history, *callbacks], resume_from=resume_from
    )
    initial = None
    if warm is not None:
        rows = warm.logits(spec.groups, strat.init.logits, strat.warmup.strength)
        initial = dict(zip(spec.task_names, rows))
    strategy = DMTG.from_config(strat, initial)
    t_search = time.perf_counter()
    strategy(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine(continue_on_failure=False))
    search_time = time.perf_counter() - t_search + (warm.seconds if warm is not None else 0.0)
    oneshot = strategy.dmtg_module
    sample = oneshot.export()
    probabilities = oneshot.probabilities()
    model = space.freeze(sample)
    t_finetune = time.perf_counter()
    if strat.finetune.epochs > 0:
        if strat.finetune.init == "scratch":
            fresh = GroupingSpace(spec.tasks, spec.groups, spec.backbone, spec.heads, data.input_shape, "independent")
            model = fresh.freeze(sample)
        train_network(model, data, spec.tasks, strat, strat.finetune.epochs, lr=strat.finetune.lr, progress=progress)
    finetune_time = time.perf_counter() - t_finetune
    device = eval_device(strat.trainer)
    dense = any(t.dense for t in spec.tasks)  # per-pixel outputs: keep evaluation batches at the training size
    eval_bs = strat.eval_batch_size or (strat.batch_size if dense else max(strat.batch_size, 256))
    per_split = {
        split: evaluate(model, getattr(data, split), spec.tasks, eval_bs, device, strat.num_workers)
        for split in ("val", "test")
    }
    model.cpu()
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
        },
    }
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
