"""Local search after the one-shot search: merge groups, move and swap tasks, on validation loss.

The search's relaxation tells which tasks read the same features. It does not see what sharing an
encoder does beyond that: with binary or noisy targets, or little data, a network trained on more
tasks often generalises better (each task regularises the others), so the partition with the lowest
validation loss can be coarser than, or differ by a task or two from, the structure the relaxation
recovers. The local search starts from the found grouping and tries its neighbours:

- **merges**: two groups become one;
- **merge-splits** (``merge_splits=True``): two groups become one and one task of the merged group
  is left on its own. The partition with the lowest loss is often one big group and one task alone
  (a regression task among binary ones, say): one step away here, while a merge and then a move
  may each win nothing on their own;
- **moves** (``moves=True``): one task goes to another group (or, with fewer groups than K, to a
  group of its own);
- **swaps** (``swaps=True``): a task of one group and a task of another exchange places, every
  group keeping its size: the way back from two tasks swapped between two groups, which single-task
  moves take in two steps, the first of which may win nothing (two pairs swapped into two wrong
  pairs: a move leaves a group of three and a single task);
- **group splits** (``group_splits=True``): with fewer groups than K, a group of four or more tasks
  is cut in two parts of at least two tasks: the way back from a merge of two groups, which
  single-task moves take one task at a time (each of which may win nothing);
- **splits** (``splits=True``): when nothing else wins, one task of a group that merges formed
  leaves it for a group of its own (while there are fewer groups than K). Groups the one-shot
  search found are not split.

The ``dmtg`` preset's "merge check" takes merges, merge-splits, moves and swaps, on the mean of three
trainings per group network: with a dozen candidates per round and one training each, the
best-scoring neighbour is often only the luckiest training (``confirm=True`` re-checks a step on
an independent training instead).

A partition is scored like HOA scores one: each group is a network of its own (the spec's encoder,
trained from scratch with the search's budget), and the partition's score is the sum of its
groups' validation losses (task weights applied; with ``replicates`` > 1, each group's loss is the
mean over that many independent trainings). A grouped network with one branch per group
trains exactly like these separate networks (its loss is a sum over branches, and the optimizers
are per-parameter), so the score is that of the partition trained as one model. Group networks are
trained on demand, the missing ones of a round (every replicate's) side by side as one batched
computation (:func:`~dmtg_nas.engine.batched.subset_losses_seeded`), and cached: a neighbour shares all
but one or two groups with the current partition.

Round by round, at most ``max_candidates`` neighbours are tried: the kinds take turns (the best
merge, merge-split, move and swap, then the second of each, ...), each kind ranked by the warm start's
affinity when there is one, so every round tries moves as well as merges. The best replaces the
current partition when its score is lower by more than ``margin`` (a fraction); the search stops
when none is, or after ``rounds`` rounds. Its cost is the group networks it trains: with three found
groups of two and 12 candidates, the first round trains 21 group networks per replicate (23 with swaps), all
in one batched run, and each later round a few more.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .partitions import members

if TYPE_CHECKING:
    from .config import SearchSpec
    from .data import TaskData

__all__ = [
    "LocalSearchOutcome",
    "SubsetScorer",
    "local_search",
    "masks_of",
    "neighbours",
    "scorer_for",
    "split_neighbours",
]

Partition = tuple[int, ...]  # group bit masks over the tasks (bit i = task i), sorted
Trained = dict[int, dict[str, dict[str, dict[str, float]]]]  # mask -> split -> task -> metric -> value


def canonical(groups: Sequence[int]) -> Partition:
    return tuple(sorted(groups))


class SubsetScorer:
    """Validation losses of per-group networks, trained on demand (missing masks in one batch) and cached.

    Args:
        train: ``train(masks, replicate) -> {mask: {"val": per-task metrics, "test": ...}}``; each
            replicate is an independent training (its own initialisation and data order).
        task_names: the tasks in spec order (bit i of a mask = task i).
        weights: the task weights.
        replicates: independent trainings per group network; a group's score is the mean of its
            replicates' losses (replicate index ``replicates`` and above: confirmation trainings).
        train_many: optional ``train_many({replicate: masks}) -> {replicate: trained}``, several
            replicates' networks in one call (one batched computation instead of one per replicate).
    """

    def __init__(
        self,
        train: Callable[[Sequence[int], int], Trained],
        task_names: Sequence[str],
        weights: Sequence[float],
        replicates: int = 1,
        train_many: Callable[[Mapping[int, Sequence[int]]], dict[int, Trained]] | None = None,
    ) -> None:
        self.train = train
        self.train_many = train_many
        self.task_names = list(task_names)
        self.weights = list(weights)
        self.replicates = replicates
        self.cache: dict[tuple[int, int], dict[str, dict[str, dict[str, float]]]] = {}  # (replicate, mask)
        # (replicate, mask) -> trained group network, where the training keeps them
        self.networks: dict[tuple[int, int], Any] = {}
        self.trained = 0  # group networks trained so far
        self.batches = 0  # batched trainings run
        # the lowest seconds per network of a training call so far (a batched call of more networks
        # costs less per network): what a time budget expects the next networks to cost
        self.per_network = math.inf

    def missing(self, masks: Collection[int]) -> int:
        """How many group networks scoring ``masks`` would train (every scoring replicate's)."""
        return sum((r, m) not in self.cache for r in range(self.replicates) for m in set(masks))

    def ensure(self, masks: Sequence[int], replicate: int | None = None) -> None:
        """Train the missing group networks of ``masks`` (every scoring replicate when ``replicate``
        is None)."""
        jobs = {}
        for r in range(self.replicates) if replicate is None else [replicate]:
            missing = sorted({m for m in masks if (r, m) not in self.cache})
            if missing:
                jobs[r] = missing
        if not jobs:
            return
        started = time.perf_counter()
        if self.train_many is not None:
            done = self.train_many(jobs)
            self.batches += 1
        else:
            done = {r: self.train(missing, r) for r, missing in jobs.items()}
            self.batches += len(jobs)
        for r, trained in done.items():
            for mask, rows in trained.items():
                self.cache[(r, mask)] = rows
            self.trained += len(jobs[r])
        seconds = time.perf_counter() - started
        self.per_network = min(self.per_network, seconds / sum(len(m) for m in jobs.values()))

    def group_loss(self, mask: int, split: str = "val", replicate: int | None = None) -> float:
        """A group's weighted loss: of one replicate, or (None) the mean over the scoring replicates."""
        if replicate is None:
            return sum(self.group_loss(mask, split, r) for r in range(self.replicates)) / self.replicates
        rows = self.cache[(replicate, mask)][split]
        return sum(self.weights[i] * rows[self.task_names[i]]["loss"] for i in members(mask))

    def score(self, partition: Partition, split: str = "val", replicate: int | None = None) -> float:
        return sum(self.group_loss(m, split, replicate) for m in partition)

    def best_replicate(self, mask: int) -> int | None:
        """The scoring replicate whose kept network of ``mask`` has the lowest validation loss (None:
        no network kept)."""
        kept = [r for r in range(self.replicates) if (r, mask) in self.networks and (r, mask) in self.cache]
        return min(kept, key=lambda r: self.group_loss(mask, "val", r)) if kept else None

    def best_networks(self, partition: Partition) -> tuple[dict[int, Any], float] | None:
        """Per group of ``partition``, the kept network of its best replicate on validation (``{mask:
        network}``), and the partition's validation score with them; None when a group has none."""
        chosen, total = {}, 0.0
        for mask in partition:
            r = self.best_replicate(mask)
            if r is None:
                return None
            chosen[mask] = self.networks[(r, mask)]
            total += self.group_loss(mask, "val", r)
        return chosen, total


def _mean_affinity(affinity: Sequence[Sequence[float]], a: int, b: int) -> float:
    values = [affinity[i][j] for i in members(a) for j in members(b)]
    return sum(values) / len(values) if values else 0.0


def neighbours(
    partition: Partition,
    max_groups: int,
    affinity: Sequence[Sequence[float]] | None = None,
    moves: bool = True,
    merge_splits: bool = False,
    group_splits: bool = False,
    swaps: bool = False,
) -> list[tuple[str, Partition]]:
    """The merges, group splits, merge-splits, single-task moves and swaps of ``partition`` as
    ``(kind, partition)``, the kinds taking turns: the best-ranked of each kind, then the second of each, and
    so on (in that order of kinds within a turn). A round tries only the first ``max_candidates``: in
    kind order, merges and merge-splits alone fill a round's 12 (three groups of three have 3 merges
    and 18 merge-splits; a group of four and two single tasks 3 and 8), so the moves a search from a
    wrong start needs most were seldom tried.

    A group split (``group_splits=True``, while there are fewer groups than ``max_groups``) cuts a
    group of four or more tasks in two parts of at least two: one step back from a merge of two
    groups, which single-task moves take only one task at a time, each of which may win nothing.

    A swap (``swaps=True``) exchanges a task of one group with a task of another, both groups keeping
    their sizes: one step back from two tasks swapped, which moves take in two (ranked by the
    affinity the two tasks gain, highest first).

    A merge-split (``merge_splits=True``) merges two groups and leaves one task of the merged group
    on its own: one step to "all but one task together", which otherwise takes a merge and a move
    that each may win nothing on their own. With ``affinity`` (N x N, higher = more related), merges
    are ordered by the mean affinity between the two groups, merge-splits by the lone task's
    affinity to the rest of the merged group (lowest first), moves by the task's mean affinity to
    its new group minus that to its old one (highest first); otherwise in mask order. A partition
    reachable in several ways is listed once, under the first of merge, group split, merge-split,
    move and swap that reaches it.
    """
    groups = list(partition)
    # each task's mean affinity to the rest of its group (what a move or a swap takes it away from)
    home = {
        t: _mean_affinity(affinity, 1 << t, g & ~(1 << t)) if affinity is not None else 0.0
        for g in groups
        for t in members(g)
    }
    merges: list[tuple[float, Partition]] = []
    lone: list[tuple[float, Partition]] = []  # merge-splits, ranked by the lone task's affinity
    for a, b in itertools.combinations(range(len(groups)), 2):
        rest = [g for k, g in enumerate(groups) if k not in (a, b)]
        merged = groups[a] | groups[b]
        gain = _mean_affinity(affinity, groups[a], groups[b]) if affinity is not None else 0.0
        merges.append((gain, canonical([*rest, merged])))
        for task in members(merged) if merge_splits else ():
            bit = 1 << task
            own = _mean_affinity(affinity, bit, merged & ~bit) if affinity is not None else 0.0
            lone.append((own, canonical([*rest, merged & ~bit, bit])))
    cuts: list[tuple[float, Partition]] = []  # group splits, ranked by the affinity across the cut
    for a, source in enumerate(groups if group_splits and len(groups) < max_groups else ()):
        tasks = members(source)
        if len(tasks) < 4:
            continue
        rest = [g for k, g in enumerate(groups) if k != a]
        first, others = tasks[0], tasks[1:]
        for size in range(1, len(others) - 1):  # the part with the first task: it and ``size`` others
            for chosen in itertools.combinations(others, size):  # the other part keeps two or more
                part = (1 << first) | sum(1 << t for t in chosen)
                across = _mean_affinity(affinity, part, source & ~part) if affinity is not None else 0.0
                cuts.append((across, canonical([*rest, part, source & ~part])))
    shifted: list[tuple[float, Partition]] = []
    if moves:
        for a, source in enumerate(groups):
            if source.bit_count() == 1:
                continue
            for task in members(source):
                bit = 1 << task
                left = source & ~bit
                for b, target in enumerate(groups):
                    if b == a:
                        continue
                    rest = [g for k, g in enumerate(groups) if k not in (a, b)]
                    gain = _mean_affinity(affinity, bit, target) - home[task] if affinity is not None else 0.0
                    shifted.append((gain, canonical([*rest, left, target | bit])))
                if len(groups) < max_groups:  # a group of its own
                    rest = [g for k, g in enumerate(groups) if k != a]
                    shifted.append((-home[task], canonical([*rest, left, bit])))
    exchanged: list[tuple[float, Partition]] = []  # swaps, ranked by the affinity they gain
    for a, b in itertools.combinations(range(len(groups)), 2) if swaps else ():
        source, target = groups[a], groups[b]
        rest = [g for k, g in enumerate(groups) if k not in (a, b)]
        for i in members(source):
            for j in members(target):
                bi, bj = 1 << i, 1 << j
                gain = 0.0
                if affinity is not None:
                    go = _mean_affinity(affinity, bi, target & ~bj) + _mean_affinity(affinity, bj, source & ~bi)
                    gain = go - (home[i] + home[j])
                # two single tasks exchanged give the partition itself, which ``seen`` drops below
                exchanged.append((gain, canonical([*rest, (source & ~bi) | bj, (target & ~bj) | bi])))
    # each kind in its own order (sorted is stable: mask order among equals), a partition under the
    # first kind that reaches it
    kinds: list[list[tuple[str, Partition]]] = []
    seen = {partition}
    for kind, ranked in (
        ("merge", sorted(merges, key=lambda c: -c[0])),
        ("group-split", sorted(cuts, key=lambda c: c[0])),
        ("merge-split", sorted(lone, key=lambda c: c[0])),
        ("move", sorted(shifted, key=lambda c: -c[0])),
        ("swap", sorted(exchanged, key=lambda c: -c[0])),
    ):
        kinds.append([])
        for _, p in ranked:
            if p not in seen:
                seen.add(p)
                kinds[-1].append((kind, p))
    return _interleave(kinds)


def _interleave(lists: Sequence[Sequence[tuple[str, Partition]]]) -> list[tuple[str, Partition]]:
    """The first of each list, then the second of each, ...: a round's first ``max_candidates``
    neighbours hold every kind, each kind's best first."""
    return [item for column in itertools.zip_longest(*lists) for item in column if item is not None]


def split_neighbours(
    partition: Partition,
    max_groups: int,
    formed: Collection[int],
    affinity: Sequence[Sequence[float]] | None = None,
) -> list[tuple[str, Partition]]:
    """A task of one of the ``formed`` groups leaves it for a group of its own, as ``("split",
    partition)``; none when ``partition`` already has ``max_groups`` groups.

    With ``affinity``, the tasks least related to the rest of their group come first; otherwise mask
    order.
    """
    if len(partition) >= max_groups:
        return []
    ranked: list[tuple[float, Partition]] = []
    for a, source in enumerate(partition):
        if source not in formed or source.bit_count() < 2:
            continue
        rest = [g for k, g in enumerate(partition) if k != a]
        for task in members(source):
            bit = 1 << task
            own = _mean_affinity(affinity, bit, source & ~bit) if affinity is not None else 0.0
            ranked.append((own, canonical([*rest, source & ~bit, bit])))
    return [("split", p) for _, p in sorted(ranked, key=lambda c: c[0])]


@dataclass
class LocalSearchOutcome:
    """Where the local search ended, and the record of every round."""

    start: Partition
    partition: Partition
    val_loss: float
    rounds: list[dict[str, Any]] = field(default_factory=list)
    networks_trained: int = 0
    batches: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # "budget": the search's time budget ended it (not a round without a step)

    @property
    def changed(self) -> bool:
        return self.partition != self.start

    def to_dict(self, task_names: Sequence[str]) -> dict[str, Any]:
        def names(p: Partition) -> list[list[str]]:
            return [[task_names[i] for i in members(m)] for m in p]

        return {
            "start": names(self.start),
            "groups": names(self.partition),
            "changed": self.changed,
            "val_loss": self.val_loss if self.rounds else None,  # None: no neighbour to try
            "networks_trained": self.networks_trained,
            "batched_trainings": self.batches,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
            "rounds": [
                {
                    "groups": names(r["partition"]),
                    "val_loss": r["val_loss"],
                    "candidates": [
                        {"kind": kind, "groups": names(p), "val_loss": loss} for kind, p, loss in r["candidates"]
                    ],
                    "accepted": names(r["accepted"]) if r["accepted"] is not None else None,
                    # merge, group-split, merge-split, move, swap or split
                    "accepted_kind": next((k for k, p, _ in r["candidates"] if p == r["accepted"]), None),
                    "confirmation": r["confirmation"],
                }
                for r in self.rounds
            ],
        }


def local_search(
    start: Partition,
    scorer: SubsetScorer,
    max_groups: int,
    *,
    margin: float,
    max_candidates: int,
    rounds: int,
    moves: bool = False,
    splits: bool = False,
    confirm: bool = False,
    affinity: Sequence[Sequence[float]] | None = None,
    merge_splits: bool = False,
    group_splits: bool = False,
    swaps: bool = False,
    seconds_left: Callable[[], float] | None = None,
) -> LocalSearchOutcome:
    """Greedy descent from ``start`` over merges and moves (see the module docstring).

    Args:
        start: the found grouping as group masks.
        scorer: trains and caches the group networks.
        max_groups: K (a move may open a new group while there are fewer).
        margin: a neighbour replaces the current partition when its score is below ``(1 - margin)``
            times the current one.
        max_candidates: neighbours tried per round.
        rounds: at most this many accepted steps.
        moves: also try single-task moves (else merges only).
        merge_splits: also try merges that leave one task of the merged group on its own.
        group_splits: also try cutting a group of four or more tasks in two (while fewer groups
            than ``max_groups``).
        swaps: also try exchanging a task of one group with a task of another.
        splits: in a round where no merge or move wins, try splitting single tasks off the groups
            merges formed (a second stage of the same round, with its own candidates).
        confirm: the round's best neighbour, picked as the lowest of many noisy scores, is checked
            again on a second, independent training of the groups it changes, and accepted only if
            it still wins by the margin there (the first scores of a chosen candidate are biased
            low: the winner's curse).
        affinity: optional N x N task affinity ranking the neighbours.
        seconds_left: a time budget, the seconds the search may still spend (asked before every
            training call). Each round trains the current partition's networks first (the start's
            always: they are the final model), then the candidates in order, a batched call at a
            time, each call as many as fit in what is left at the lowest seconds per network of
            the calls so far; the search stops after a round that left candidates untried
            (``outcome.stopped = "budget"``). None: no budget (the current partition and the
            candidates train in one batched computation).
    """
    t0 = time.perf_counter()
    current = canonical(start)
    outcome = LocalSearchOutcome(current, current, float("inf"))
    visited = {current}
    for _ in range(rounds):
        stages = [neighbours(current, max_groups, affinity, moves, merge_splits, group_splits, swaps)]
        if splits:  # only looked at when the first stage finds no step
            stages.append(split_neighbours(current, max_groups, set(current) - set(outcome.start), affinity))
        record: dict[str, Any] | None = None
        accepted = cut = False
        for stage in stages:
            candidates = [c for c in stage if c[1] not in visited][:max_candidates]
            if candidates and seconds_left is not None:
                candidates, left = _within_budget(candidates, current, scorer, seconds_left)
                cut = cut or left
            if not candidates:
                continue
            scorer.ensure([m for p in [current, *(p for _, p in candidates)] for m in p])
            current_loss = scorer.score(current)
            scored = [(kind, p, scorer.score(p)) for kind, p in candidates]
            if record is None:
                record = {
                    "partition": current,
                    "val_loss": current_loss,
                    "candidates": [],
                    "accepted": None,
                    "confirmation": None,
                }
            record["candidates"].extend(scored)
            _, best, best_loss = min(scored, key=lambda c: c[2])
            accepted = best_loss < (1.0 - margin) * current_loss
            if accepted and confirm:
                new, old = set(best) - set(current), set(current) - set(best)
                check = scorer.replicates  # a training none of the scores used
                scorer.ensure(sorted(new | old), replicate=check)
                change = sum(scorer.group_loss(m, replicate=check) for m in new) - sum(
                    scorer.group_loss(m, replicate=check) for m in old
                )
                accepted = change < -margin * current_loss
                record["confirmation"] = {"change": change, "accepted": accepted}
            if accepted:
                break
        if cut and not accepted:  # the budget left candidates untried
            outcome.stopped = "budget"
        if record is None:
            break
        outcome.rounds.append(record)
        outcome.val_loss = record["val_loss"]
        if not accepted:
            break
        record["accepted"] = best
        current = best
        visited.add(current)
        outcome.val_loss = best_loss
    outcome.partition = current
    outcome.networks_trained, outcome.batches = scorer.trained, scorer.batches
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _within_budget(
    candidates: Sequence[tuple[str, Partition]],
    current: Partition,
    scorer: SubsetScorer,
    seconds_left: Callable[[], float],
) -> tuple[list[tuple[str, Partition]], bool]:
    """Train the current partition's networks, then the candidates in order, a batched call at a
    time, each call as many of the next candidates as fit in ``seconds_left()`` at the scorer's
    seconds per network (re-estimated after every call: a larger call costs less per network).
    Returns the candidates trained and whether some were left for want of time."""
    scorer.ensure(list(current))
    done: list[tuple[str, Partition]] = []
    todo = list(candidates)
    while todo:
        masks: set[int] = set()
        fit = 0
        for _, partition in todo:
            if scorer.missing(masks | set(partition)) * scorer.per_network > seconds_left():
                break
            masks |= set(partition)
            fit += 1
        if fit == 0:
            break
        scorer.ensure(sorted(masks))
        done, todo = done + todo[:fit], todo[fit:]
    return done, bool(todo)


def masks_of(groups: Sequence[Sequence[str]], task_names: Sequence[str]) -> Partition:
    index = {name: i for i, name in enumerate(task_names)}
    return canonical([sum(1 << index[t] for t in g) for g in groups])


def scorer_for(
    spec: SearchSpec,
    data: TaskData,
    replicates: int = 1,
    stage: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> SubsetScorer:
    """A scorer whose group networks are HOA's subset networks for ``spec`` on ``data``; the
    missing networks of every replicate train side by side in one batched computation (with
    ``stage``, under a progress line on stderr named so). ``stop`` is asked after every training
    step: True raises :class:`~dmtg_nas.engine.batched.TrainingStopped`."""
    from .engine.batched import subset_losses_seeded

    def seed(replicate: int) -> int:  # replicate 0: the strategy's seed; others: independent trainings
        return spec.strategy.seed + 7919 * replicate

    def train_many(jobs: Mapping[int, Sequence[int]]) -> dict[int, Trained]:
        order = sorted(jobs)
        # every scoring replicate's networks are kept: the final model takes, per group, the one
        # with the lowest validation loss
        keep: list[dict[int, Any] | None] = [{} if r < replicates else None for r in order]
        trained = subset_losses_seeded(spec, data, [(seed(r), jobs[r]) for r in order], keep, stage=stage, stop=stop)
        done = dict(zip(order, trained))
        for r, kept in zip(order, keep):
            scorer.networks.update({(r, mask): net for mask, net in (kept or {}).items()})
        return done

    def train(masks: Sequence[int], replicate: int) -> Trained:
        return train_many({replicate: masks})[replicate]

    scorer = SubsetScorer(train, spec.task_names, [t.weight for t in spec.tasks], replicates, train_many)
    return scorer
