"""Stage 4: the merge check, a local search over groupings next to the search's (see
:mod:`dmtg_nas.localsearch`), and the final network it leads to."""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from .. import localsearch
from ..data import TaskData, make_loader
from ..engine.batched import TrainingStopped, trains_batched
from ..engine.networks import partition_network
from ..engine.train import train_network
from ..localsearch import masks_of, scorer_for
from ..network import GroupedNetwork, groups_from_sample
from ..runstate import preserved_rng
from ..schema import SearchSpec
from ..tasks import summarize
from ..warmstart import WarmStart
from .context import RunContext
from .finetune import finetune, network_of
from .records import CheckRecord, FinetuneRecord, SearchRecord

__all__ = ["CheckPlan", "all_task_seconds", "check_plan", "check_stage"]


@dataclass(frozen=True)
class CheckPlan:
    """Whether the merge check runs after a search, decided once from the search's grouping (the
    fine-tune before the check depends on it)."""

    runs: bool
    record: dict[str, str] | None = None  # where it does not run: metrics.json's record (None: off)


def check_plan(spec: SearchSpec, data: TaskData, sample: Mapping[str, int]) -> CheckPlan:
    """Whether the merge check runs after a search that found ``sample`` (``local_search.enabled``),
    and where the strategy wants it but it does not run, why."""
    ls = spec.strategy.local_search
    if not (ls.enabled is True or (ls.enabled == "auto" and len(spec.tasks) > 1)):
        return CheckPlan(False)
    skipped = _skipped(spec, data, sample)
    return CheckPlan(skipped is None and len(spec.tasks) > 1, skipped)


def check_stage(
    ctx: RunContext,
    search: SearchRecord,
    tuned: FinetuneRecord,
    warm: WarmStart | None,
    plan: CheckPlan,
    run_started: float | None = None,
) -> CheckRecord:
    """Run the merge check where ``plan`` says so and pick the final network: the check's group
    networks where they form the final grouping and beat the fine-tuned network on validation (or
    the grouping changed, or no fine-tune ran), else the fine-tuned network. ``run_started``: the
    run's start (``time.perf_counter()``), which ``local_search.budget`` counts from (default: now)."""
    t0 = time.perf_counter()
    spec, strat = ctx.spec, ctx.strategy
    sample, model = dict(search.sample), tuned.model
    ls = strat.local_search
    if not plan.runs:
        return CheckRecord(sample, model, plan.record, seconds=time.perf_counter() - t0)
    names = spec.task_names
    stage = "merge check" if ctx.progress else None
    scorer = scorer_for(spec, ctx.data, ls.replicates, stage, stop=lambda: ctx.interrupts.signum is not None)
    seconds_left, budget = None, None
    if ls.budget is not None:  # the whole run within budget x K trainings of one all-task network
        started = t0 if run_started is None else run_started
        all_task = all_task_seconds(spec, ctx.data)
        limit = ls.budget * spec.groups * all_task

        def seconds_left() -> float:
            return limit - (time.perf_counter() - started)

        budget = {"all_task_seconds": float(f"{all_task:.4g}"), "run_seconds": float(f"{limit:.4g}")}
    try:
        outcome = localsearch.local_search(
            masks_of(groups_from_sample(names, sample, spec.groups), names),
            scorer,
            spec.groups,
            margin=ls.margin,
            max_candidates=ls.max_candidates,
            rounds=ls.rounds,
            moves=ls.moves,
            merge_splits=ls.merge_splits,
            group_splits=ls.group_splits,
            swaps=ls.swaps,
            splits=ls.splits,
            confirm=ls.confirm,
            affinity=warm.affinity if warm is not None else None,
            seconds_left=seconds_left,
        )
    except TrainingStopped:  # stop() is the signal's flag: it raises here
        ctx.stop_if_interrupted("merge check")
        raise
    ctx.stop_if_interrupted("merge check")  # a signal after the check's last step
    record = outcome.to_dict(names)
    if budget is not None:
        record["budget"] = budget
    if outcome.changed:
        sample = _branches_kept(record["groups"], sample, spec.groups)
    # the final model: the group networks the check trained (each from scratch with the search's
    # budget; per group the training with the lowest validation loss) where they form the final
    # grouping, when they beat the fine-tuned network on validation, the grouping changed or no
    # fine-tune ran; else the fine-tuned network
    networks, networks_val = scorer.best_networks(outcome.partition) or ({}, math.inf)
    assembled = _assemble(search.space.architecture, sample, networks, names)  # None where a group has none
    replace = outcome.changed or tuned.not_run is not None
    search_val = ctx.evaluate(model, "val") if not replace and assembled is not None else None
    skipped: list[dict[str, Any]] = []
    if replace or (search_val is not None and networks_val < summarize(search_val, spec.tasks)["weighted_loss"]):
        record["final_model"] = "group networks"
        if assembled is None:  # e.g. a shared stem: the chosen grouping trained from scratch
            ctx.seed()
            assembled = network_of(ctx, search.space, sample, "scratch")
            skipped = finetune(ctx, assembled, strat.epochs + strat.finetune.epochs, lr=None, stage="check")
            record["final_model"] = "retrained"
        model, search_val = assembled, None
    else:
        record["final_model"] = "search"
    return CheckRecord(sample, model, record, search_val, outcome.seconds, time.perf_counter() - t0, skipped)


class _StepClock(pl.Callback):
    """Times a training's steps (end to end, Lightning's own work included) and stops it after
    ``warmup + steps`` of them."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.ends.append(time.perf_counter())
        if len(self.ends) > self.warmup + self.steps:
            trainer.should_stop = True

    @property
    def per_step(self) -> float:
        gaps = [b - a for a, b in itertools.pairwise(self.ends[self.warmup :])]
        return statistics.median(gaps) if gaps else math.inf


def all_task_seconds(spec: SearchSpec, data: TaskData, steps: int = 30, warmup: int = 5) -> float:
    """The seconds one all-task network (every task on one encoder) takes to train with the
    strategy's budget (the search's epochs plus the fine-tune's, on its batches) on this machine, as
    ``dmtg retrain`` or the cost benchmark's all-task training would: the network trained by the
    same trainer for ``warmup`` untimed and ``steps`` timed optimisation steps, the median step
    times the budget's steps (the Trainer's start and the final evaluation are not counted). The
    random generators are left as they were, so a run draws the same numbers with or without it."""
    strat = spec.strategy
    per_epoch = len(make_loader(data.train, strat.batch_size, shuffle=False, shard=False))
    clock = _StepClock(warmup, steps)
    with preserved_rng():
        net = partition_network(spec, [spec.task_names], data.input_shape)
        train_network(net, data, spec.tasks, strat, math.ceil((warmup + steps + 2) / per_epoch), callbacks=[clock])
    return clock.per_step * per_epoch * (strat.epochs + strat.finetune.epochs)


def _skipped(spec: SearchSpec, data: TaskData, sample: Mapping[str, int]) -> dict[str, str] | None:
    """Why the merge check does not run on this search (its record in metrics.json), or None."""
    ls = spec.strategy.local_search
    if ls.enabled == "auto" and not trains_batched(spec, data):
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
