"""The grouping methods users compare DMTG against, on the same data, encoder and budget.

- ``naive``: all tasks in one network (1 training run).
- ``stl``: one network per task (N networks).
- ``random``: a uniformly random partition into exactly K groups (RG), seeded.
- ``hoa``: Standley et al., ICML 2020, exhaustive: one network per non-empty task subset
  (2^N - 1), then the best partition into at most K groups chosen exactly on validation loss.
- ``hoa-pairs``: HOA's cheaper variant: singles and pairs only; the loss of task t in a larger
  group S is estimated as the mean of its pair losses ``mean_{j in S, j != t} L_t({t, j})``; the
  chosen groups are then trained.
- ``hoa-cover``: HOA's own rule on the exhaustive networks: up to K networks whose task sets may
  overlap, each task scored by its best network (not a partition; labelled ``rule: cover``).
- ``tag``: Fifty et al., NeurIPS 2021: one all-task network trained with lookahead inter-task
  affinity ``Z[i -> j] = 1 - L_j(theta - lr * grad L_i) / L_j(theta)`` measured every
  ``affinity_every``-th step and averaged; the partition into at most K groups maximising the total
  affinity (each task's mean affinity from its group mates) is chosen exactly; then trained.
- ``dmtg``: the one-shot search (:func:`dmtg_nas.pipeline.run.run_search`); its final model is the search's
  own pruned network (plus the strategy's fine-tuning), no retraining.
- ``dmtg-retrain``: the search's groups trained from scratch with the same budget as every other
  method's groups (the fair comparison of the grouping itself).

Every method trains with the spec's encoder, heads, optimizer, batch size and epoch budget
(``strategy.epochs + strategy.finetune.epochs`` per network), so results are comparable.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch

from .data import TaskData
from .engine.batched import subset_losses_one_by_one
from .engine.networks import partition_network
from .engine.scout import lookahead_affinity
from .engine.train import train_network, train_partition
from .metrics import relative_gain
from .partitions import best_cover, best_partition, members, random_partition
from .pipeline.run import run_search
from .registry import Registry
from .schema import SearchSpec, TaskConfig
from .tasks import PRIMARY_METRIC, summarize

__all__ = [
    "METHODS",
    "MethodResult",
    "AffinityRecorder",
    "tag_group_score",
    "run_method",
    "delta_m",
]


@dataclass
class MethodResult:
    """One method's grouping decision and final model's metrics.

    Attributes:
        rule: ``partition`` (every task in exactly one group) or ``cover`` (HOA's overlapping rule).
        trainings: separate training runs (a K-branch network trained jointly counts once).
        decision_seconds: wall time until the groups were decided.
        total_seconds: wall time until the final model was trained.
    """

    method: str
    groups: list[list[str]]
    rule: str
    trainings: int
    decision_seconds: float
    total_seconds: float
    metrics: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)


Method = Callable[..., MethodResult]
METHODS: Registry[Method] = Registry("method")


def _budget(spec: SearchSpec) -> int:
    return spec.strategy.epochs + spec.strategy.finetune.epochs


def _names(spec: SearchSpec, blocks: Sequence[Sequence[int]]) -> list[list[str]]:
    return [[spec.task_names[i] for i in block] for block in blocks]


def _trained(
    method: str, spec: SearchSpec, data: TaskData, groups: list[list[str]], t0: float, **kw: Any
) -> MethodResult:
    decided = time.perf_counter()
    _, metrics = train_partition(spec, data, groups)
    return MethodResult(
        method,
        groups,
        kw.pop("rule", "partition"),
        kw.pop("trainings", 0) + 1,
        decided - t0,
        time.perf_counter() - t0,
        metrics,
        kw.pop("details", {}),
    )


@METHODS.register("naive")
def naive(spec: SearchSpec, data: TaskData, **_: Any) -> MethodResult:
    """All tasks in one network."""
    return _trained("naive", spec, data, [spec.task_names], time.perf_counter())


@METHODS.register("stl")
def stl(spec: SearchSpec, data: TaskData, **_: Any) -> MethodResult:
    """One network per task (trained side by side; separate parameters, so equivalent to N runs)."""
    result = _trained("stl", spec, data, [[t] for t in spec.task_names], time.perf_counter())
    result.trainings = len(spec.tasks)
    return result


@METHODS.register("random")
def random_groups(spec: SearchSpec, data: TaskData, *, seed: int = 0, **_: Any) -> MethodResult:
    """A uniformly random partition into exactly K groups (RG)."""
    t0 = time.perf_counter()
    blocks = random_partition(len(spec.tasks), spec.groups, random.Random(seed))
    return _trained("random", spec, data, _names(spec, blocks), t0)


def _partition_metrics(
    spec: SearchSpec, trained: dict[int, dict[str, dict[str, dict[str, float]]]], blocks: Sequence[Sequence[int]]
) -> dict[str, Any]:
    """Metrics of a partition assembled from already-trained subset networks."""
    metrics: dict[str, Any] = {"val": {}, "test": {}}
    for block in blocks:
        mask = sum(1 << i for i in block)
        for split in ("val", "test"):
            for i in block:
                name = spec.task_names[i]
                metrics[split][name] = trained[mask][split][name]
    metrics["totals"] = {split: summarize(metrics[split], spec.tasks) for split in ("val", "test")}
    return metrics


@METHODS.register("hoa")
def hoa(spec: SearchSpec, data: TaskData, *, progress: Callable[[str], None] | None = None, **_: Any) -> MethodResult:
    """Exhaustive HOA with the partition rule (best partition into at most K groups, exact)."""
    n = len(spec.tasks)
    t0 = time.perf_counter()
    trained = subset_losses_one_by_one(spec, data, list(range(1, 1 << n)), progress)

    def cost(mask: int) -> float:
        return sum(trained[mask]["val"][spec.task_names[i]]["loss"] for i in members(mask))

    blocks, value = best_partition(n, cost, spec.groups)
    decided = time.perf_counter() - t0
    details = {"subset_val_loss": {_label(spec, m): cost(m) for m in trained}, "best_val_loss": value}
    return MethodResult(
        "hoa", _names(spec, blocks), "partition", len(trained), decided, decided,
        _partition_metrics(spec, trained, blocks), details,
    )  # fmt: skip


@METHODS.register("hoa-cover")
def hoa_cover(
    spec: SearchSpec, data: TaskData, *, progress: Callable[[str], None] | None = None, **_: Any
) -> MethodResult:
    """Exhaustive HOA with its own rule: up to K possibly overlapping networks, each task scored by
    its best chosen network."""
    n = len(spec.tasks)
    t0 = time.perf_counter()
    trained = subset_losses_one_by_one(spec, data, list(range(1, 1 << n)), progress)
    loss = {m: {i: trained[m]["val"][spec.task_names[i]]["loss"] for i in members(m)} for m in trained}
    chosen, value, exact = best_cover(n, loss, spec.groups)
    decided = time.perf_counter() - t0
    metrics: dict[str, Any] = {"val": {}, "test": {}}
    for i, name in enumerate(spec.task_names):
        best = min((sum(1 << j for j in c) for c in chosen if i in c), key=lambda m: loss[m][i])
        for split in ("val", "test"):
            metrics[split][name] = trained[best][split][name]
    metrics["totals"] = {split: summarize(metrics[split], spec.tasks) for split in ("val", "test")}
    details = {"best_val_loss": value, "exact": exact}
    return MethodResult("hoa-cover", _names(spec, chosen), "cover", len(trained), decided, decided, metrics, details)


@METHODS.register("hoa-pairs")
def hoa_pairs(
    spec: SearchSpec, data: TaskData, *, progress: Callable[[str], None] | None = None, **_: Any
) -> MethodResult:
    """HOA from singles and pairs, higher orders estimated by averaging pair losses; then trained."""
    n = len(spec.tasks)
    t0 = time.perf_counter()
    subsets = [1 << i for i in range(n)] + [(1 << i) | (1 << j) for i in range(n) for j in range(i + 1, n)]
    trained = subset_losses_one_by_one(spec, data, subsets, progress)

    def task_loss_in(i: int, mask: int) -> float:
        others = [j for j in members(mask) if j != i]
        if not others:
            return trained[1 << i]["val"][spec.task_names[i]]["loss"]
        return sum(trained[(1 << i) | (1 << j)]["val"][spec.task_names[i]]["loss"] for j in others) / len(others)

    blocks, value = best_partition(n, lambda m: sum(task_loss_in(i, m) for i in members(m)), spec.groups)
    result = _trained(
        "hoa-pairs", spec, data, _names(spec, blocks), t0, trainings=len(subsets), details={"estimated_val": value}
    )
    return result


class AffinityRecorder(pl.Callback):
    """TAG's lookahead inter-task affinity, measured inside the training loop.

    Every ``every``-th step, before the optimizer step, for each task i: a gradient step on the
    shared encoder with task i's loss alone (learning rate = the optimizer's current one), then
    every task j's loss on the same batch: ``Z[i, j] += 1 - L_j(after) / L_j(before)``. ``affinity``
    is the average over measurements, shape (N, N), row = source task.
    """

    def __init__(self, tasks: Sequence[TaskConfig], every: int = 1) -> None:
        self.tasks = list(tasks)
        self.every = max(1, every)
        n = len(self.tasks)
        self.total = torch.zeros(n, n, dtype=torch.float64)
        self.count = 0

    @property
    def affinity(self) -> torch.Tensor:
        return self.total / max(self.count, 1)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every:
            return
        x, targets = batch
        model = pl_module.model
        heads = list(model.heads)
        # the shared parameters: the stem (if any) and the one branch
        encoder = model.branches[0] if model.stem is None else torch.nn.Sequential(model.stem, model.branches[0])
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.total += lookahead_affinity(encoder, heads, self.tasks, x, targets, lr).double().cpu()
        self.count += 1


def tag_group_score(affinity: torch.Tensor, block: Sequence[int]) -> float:
    """TAG's score of one group: sum over its tasks of the mean affinity onto the task from the
    other members (0 for a singleton)."""
    if len(block) < 2:
        return 0.0
    return float(sum(affinity[[j for j in block if j != i], i].mean() for i in block))


@METHODS.register("tag")
def tag(
    spec: SearchSpec,
    data: TaskData,
    *,
    affinity_every: int = 1,
    progress: Callable[[str], None] | None = None,
    **_: Any,
) -> MethodResult:
    """TAG: affinities from one all-task training, the best partition by total affinity, then trained."""
    n = len(spec.tasks)
    t0 = time.perf_counter()
    pl.seed_everything(spec.strategy.seed, workers=True, verbose=False)
    model = partition_network(spec, [spec.task_names], data.input_shape)
    recorder = AffinityRecorder(spec.tasks, affinity_every)
    train_network(model, data, spec.tasks, spec.strategy, _budget(spec), callbacks=[recorder])
    affinity = recorder.affinity
    blocks, value = best_partition(n, lambda m: -tag_group_score(affinity, members(m)), spec.groups)
    if progress is not None:
        progress(f"tag: affinity from {recorder.count} measurements; groups {_names(spec, blocks)}")
    details = {
        "affinity": {a: dict(zip(spec.task_names, row)) for a, row in zip(spec.task_names, affinity.tolist())},
        "measurements": recorder.count,
        "total_affinity": -value,
    }
    return _trained("tag", spec, data, _names(spec, blocks), t0, trainings=1, details=details)


@METHODS.register("dmtg")
def dmtg(spec: SearchSpec, data: TaskData, **_: Any) -> MethodResult:
    """The search of the spec's strategy; its final network (the pruned, fine-tuned one, or with the
    merge check the group networks it trained, see :mod:`dmtg_nas.localsearch`) is the final model.
    Trainings: the search, plus the merge check's group networks; the decision includes the check."""
    t0 = time.perf_counter()
    result = run_search(spec, None, progress=False, data=data)
    total = time.perf_counter() - t0
    metrics = {k: result.metrics[k] for k in ("val", "test", "totals")}
    details: dict[str, Any] = {"probabilities": result.probabilities}
    if "ground_truth" in result.metrics:
        details["ground_truth"] = result.metrics["ground_truth"]
    # decided after the warm start, the search and the check's local search
    decision, trainings = result.timings.decision, 1
    local = result.local_search or {}
    if "rounds" in local:
        keys = ("start", "groups", "changed", "final_model", "networks_trained", "seconds")
        details["local_search"] = {k: local[k] for k in keys}
        trainings += local["networks_trained"]
    return MethodResult("dmtg", result.groups, "partition", trainings, decision, total, metrics, details)


@METHODS.register("dmtg-retrain")
def dmtg_retrain(spec: SearchSpec, data: TaskData, **_: Any) -> MethodResult:
    """The one-shot search's groups, then trained from scratch like every other method's groups
    (what ``dmtg retrain --init scratch`` does)."""
    t0 = time.perf_counter()
    result = run_search(spec, None, progress=False, data=data)
    return _trained("dmtg-retrain", spec, data, result.groups, t0, trainings=1)


def run_method(name: str, spec: SearchSpec, data: TaskData, **kwargs: Any) -> MethodResult:
    """Run a registered method by name (``naive``, ``stl``, ``random``, ``hoa``, ...)."""
    return METHODS.lookup(name)(spec, data, **kwargs)


# Delta_m here: one metric per task, as the field reports it (mse for regression, accuracy for
# classification); other task types use their primary evaluation metric.
PRIMARY = {"regression": "mse", "binary": "accuracy", "multiclass": "accuracy"}


def delta_m(
    metrics: dict[str, dict[str, float]], reference: dict[str, dict[str, float]], tasks: Sequence[TaskConfig]
) -> float:
    """Delta_m % against a reference (single-task learning): positive means better than the reference.

    ``100/T sum_t (-1)^{l_t} (M_t - M_ref,t) / M_ref,t`` on each task's primary metric
    (:func:`dmtg_nas.metrics.relative_gain` gives each term).
    """
    total = 0.0
    for t in tasks:
        metric = PRIMARY.get(t.type, PRIMARY_METRIC[t.type])
        gain = relative_gain(metric, metrics[t.name][metric], reference[t.name][metric])
        total += gain if gain is not None else 0.0
    return 100.0 * total / len(tasks)


def _label(spec: SearchSpec, mask: int) -> str:
    return "+".join(spec.task_names[i] for i in members(mask))
