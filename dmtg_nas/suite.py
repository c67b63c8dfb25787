"""The benchmark suite: does a strategy find the groups that are there?

Each *shape* is a data set, its tasks, an encoder and K. Planted shapes (:class:`Shape`: group
sizes, noise, task types, relation) have a known partition; real-data shapes (:class:`DigitsShape`:
attributes of scikit-learn's digits as images or as a pixel table) have none and are scored against
the exhaustive reference only. For every shape and seed the suite runs one search with the strategy
under test and scores its grouping:

- on planted shapes, the adjusted Rand index (ARI) against the planted partition, and whether a
  found group merges tasks of different planted groups (on real-data shapes these fields are None);
- for shapes small enough (N <= ``exhaustive_max``), the exhaustive reference: one network per task
  subset (HOA's exhaustive training; batched in one process, each network trained exactly as it
  would be alone: :func:`~dmtg_nas.baselines.subset_losses_joint`), the best partition into at
  most K groups on validation loss, and, from the same networks, the test loss of the found,
  planted and optimal partitions, so the found grouping is compared with the optimum under
  identical training;
- otherwise the found and planted partitions are each trained from scratch with the same budget.

Two yardsticks come with every exhaustive run. The *median random partition*: the test-loss gap of
the median partition into exactly K groups (what the ``random`` method draws) and into at most K
groups, from the same reference; a found grouping above the first is flagged
(``worse_than_random``). The *reliability* of the reference, when it averages R >= 2 trainings: the
mean pairwise Pearson correlation between the trainings' costs of every partition into at most K
groups, and the split-half correlation (the mean of the first half of the trainings against the mean
of the second half), on validation and on test loss. A reliability near 0 means the reference
cannot rank groupings: its optimum, and the gaps, then measure training noise. With R >= 6
trainings, the reliability also holds the *ceiling* (:func:`reference_ceiling`): how often an
exhaustive search that scores every partition on three trainings, as the merge check does, lands
within 2% of the optimum of the other trainings; no search choosing on validation loss with that
many trainings per group network can be expected to do better on that data.

Baseline grouping methods of the side-by-side benchmark (``tag``, ``hoa-pairs``, ``random``, ...)
run on the same shapes, seeds and training budget as the ``dmtg`` preset (``run_suite(method=...)``,
``dmtg suite --method tag``): their grouping is scored exactly like a strategy's, and
``search_seconds`` is the time until their groups were decided.

Every strategy run also records the grouping after each stage of the pipeline (warm start, affinity
scout, relaxation, polish, fine-tune, merge check), scored on the same reference: the report's
ablation table. With ``start`` (``dmtg suite --start swapped|random``) the search starts from a
deliberately wrong grouping (``strategy.init.groups``): the optimum (or the planted partition)
with two tasks of different groups swapped, or a random partition into K groups; the record keeps
the start, scored like the stages, so the report says whether the search left it for a better one.

``run_suite`` writes ``suite.json`` (every run), ``suite.md`` (per-shape summary and the pass rates
of the quality criteria) and ``suite.png``.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .components import load_data
from .config import SearchSpec
from .engine.batched import subset_losses_joint, subset_losses_seeded
from .engine.train import train_partition
from .partitions import best_partition, members, random_partition, set_partitions
from .pipeline.outputs import adjusted_rand_index
from .pipeline.run import run_search
from .progress import Progress
from .shapes import SHAPE_GROUPS, SHAPES, SHORT_SHAPES, DigitsShape, Shape, SuiteShape, shape_spec

__all__ = [
    "DigitsShape",
    "SHAPES",
    "SHAPE_GROUPS",
    "SHORT_SHAPES",
    "Shape",
    "SuiteShape",
    "best_grouping",
    "exhaustive_reference",
    "exhaustive_trainings",
    "mean_reference",
    "parse_seeds",
    "partition_costs",
    "random_yardstick",
    "reference_ceiling",
    "reference_reliability",
    "reference_table",
    "reference_tables",
    "run_suite",
    "score",
    "shape_spec",
    "stage_rows",
    "start_rows",
    "wrong_start",
]

STARTS = ("swapped", "random")  # wrong starts of the search (run_suite(start=...))
GROUPING_METHODS = ("tag", "hoa", "hoa-pairs", "random", "naive", "stl")  # baselines that decide a grouping


def _merged(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> bool:
    label = {t: i for i, g in enumerate(truth) for t in g}
    return any(len({label[t] for t in g}) > 1 for g in found)


def _same(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> bool:
    return sorted(map(sorted, a)) == sorted(map(sorted, b))


Reference = dict[int, dict[str, dict[str, dict[str, float]]]]


REFERENCE_SEED_OFFSET = 100_003  # the reference's trainings use seeds no method under test uses


def _budget_key(shape: SuiteShape, seed: int, spec: SearchSpec) -> str:
    """Shape, seed and training budget (epochs, batch size, optimizer, schedule; not the grouping
    method, nor the logits' own learning rate, which no subset network has)."""
    st = spec.strategy
    budget = (
        st.epochs + st.finetune.epochs,
        st.batch_size,
        st.optimizer.model_copy(update={"logits_lr": None}).model_dump_json(),
        st.lr_schedule.model_dump_json(),
    )
    return f"{shape.name}/{seed}/" + "/".join(map(str, budget))


def reference_key(shape: SuiteShape, seed: int, spec: SearchSpec, trainings: int) -> str:
    """The key of one exhaustive reference in a record: budget and the number of trainings averaged."""
    return f"{_budget_key(shape, seed, spec)}/reference-x{trainings}"


def reference_table(
    shape: SuiteShape,
    seed: int,
    spec: SearchSpec,
    data: Any,
    trainings: int,
    cache: dict[str, Reference] | None = None,
) -> Reference:
    """The exhaustive reference of a shape and seed at ``spec``'s budget (see :func:`exhaustive_reference`),
    its trainings cached in ``cache`` under ``<budget>/reference/training-r``."""
    return mean_reference(reference_tables(shape, seed, spec, data, trainings, cache))


def reference_tables(
    shape: SuiteShape,
    seed: int,
    spec: SearchSpec,
    data: Any,
    trainings: int,
    cache: dict[str, Reference] | None = None,
) -> list[Reference]:
    """Each training of the exhaustive reference of a shape and seed (see :func:`exhaustive_trainings`),
    cached in ``cache`` under ``<budget>/reference/training-r``."""
    return exhaustive_trainings(spec, data, trainings, cache, f"{_budget_key(shape, seed, spec)}/reference")


def best_grouping(trained: Reference, names: Sequence[str], groups: int) -> list[list[str]]:
    """The best partition into at most ``groups`` groups on the subset networks' validation losses."""
    blocks, _ = best_partition(
        len(names), lambda m: sum(trained[m]["val"][names[i]]["loss"] for i in members(m)), groups
    )
    return [[names[i] for i in b] for b in blocks]


def exhaustive_trainings(
    spec: SearchSpec, data: Any, trainings: int = 1, cache: dict[str, Reference] | None = None, key: str = ""
) -> list[Reference]:
    """Every task subset's network, trained ``trainings`` times independently (seeds offset by
    ``REFERENCE_SEED_OFFSET``, so no search or baseline shares an initialisation with them); one
    table per training. With ``cache``, each training is kept under ``key/training-r`` and reused
    (a reference of 3 trainings after one of 1 trains 2 more)."""
    masks = list(range(1, 1 << len(spec.tasks)))
    names = [f"{key}/training-{r}" for r in range(trainings)]
    missing = [r for r in range(trainings) if cache is None or names[r] not in cache]
    # the missing trainings side by side in one batched computation, each with its own seed
    seeds = [(spec.strategy.seed + REFERENCE_SEED_OFFSET * (r + 1), masks) for r in missing]
    fresh = dict(zip(missing, subset_losses_seeded(spec, data, seeds) if missing else []))
    if cache is not None:
        cache.update({names[r]: t for r, t in fresh.items()})
    return [fresh[r] if r in fresh else cache[names[r]] for r in range(trainings)]  # type: ignore[index]


def mean_reference(tables: Sequence[Reference]) -> Reference:
    """The per-subset, per-task metrics averaged over independent trainings."""
    first = tables[0]
    return {
        m: {
            split: {
                task: {k: statistics.fmean(t[m][split][task][k] for t in tables) for k in rows}
                for task, rows in first[m][split].items()
            }
            for split in first[m]
        }
        for m in first
    }


def exhaustive_reference(
    spec: SearchSpec, data: Any, trainings: int = 1, cache: dict[str, Reference] | None = None, key: str = ""
) -> Reference:
    """Every task subset's network, trained ``trainings`` times independently (see
    :func:`exhaustive_trainings`); the per-task metrics averaged over the trainings."""
    return mean_reference(exhaustive_trainings(spec, data, trainings, cache, key))


Partition = tuple[int, ...]  # a partition of the tasks as its groups' bit masks


def partition_costs(table: Reference, names: Sequence[str], groups: int, split: str) -> dict[Partition, float]:
    """Every partition of the tasks into at most ``groups`` groups (in a fixed order) and its cost on
    ``split``: the summed per-task losses of each group's subset network."""
    block = {m: sum(table[m][split][names[i]]["loss"] for i in members(m)) for m in table}
    costs = {}
    for p in set_partitions(len(names), groups):
        masks = tuple(sum(1 << i for i in b) for b in p)
        costs[masks] = sum(block[m] for m in masks)
    return costs


def _pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Pearson's r; None where either side is constant (no ranking to compare)."""
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    da, db = [x - ma for x in a], [y - mb for y in b]
    sa, sb = math.sqrt(sum(x * x for x in da)), math.sqrt(sum(y * y for y in db))
    if sa <= 1e-12 * max(1.0, abs(ma)) or sb <= 1e-12 * max(1.0, abs(mb)):
        return None
    return max(-1.0, min(1.0, sum(x * y for x, y in zip(da, db)) / (sa * sb)))


def reference_reliability(tables: Sequence[Reference], names: Sequence[str], groups: int) -> dict[str, Any] | None:
    """How far independent trainings of the reference agree on the partitions' costs (None for one
    training).

    Per split (``val``, ``test``): ``pairwise``, the mean Pearson correlation over every pair of
    trainings between their costs of every partition into at most ``groups`` groups; ``split_half``,
    the correlation between the mean of the first half of the trainings (``R // 2``) and the mean of
    the rest. Near 1: the trainings rank the groupings alike; near 0: the ranking is training noise.
    A correlation with a constant side is None (left out of the mean)."""
    if len(tables) < 2:
        return None
    out: dict[str, Any] = {"trainings": len(tables)}
    half = len(tables) // 2
    by_split: dict[str, list[list[float]]] = {}
    for split in ("val", "test"):
        costs = by_split[split] = [list(partition_costs(t, names, groups, split).values()) for t in tables]
        pairs = [_pearson(a, b) for a, b in itertools.combinations(costs, 2)]
        valid = [r for r in pairs if r is not None]
        first = [statistics.fmean(c) for c in zip(*costs[:half])]
        second = [statistics.fmean(c) for c in zip(*costs[half:])]
        out[split] = {
            "pairwise": statistics.fmean(valid) if valid else None,
            "split_half": _pearson(first, second),
        }
    out["partitions"] = len(by_split["val"][0])
    out["ceiling"] = reference_ceiling(by_split["val"], by_split["test"])
    return out


CEILING_TRAININGS = 3  # the trainings per group network the dmtg preset's merge check scores on


def reference_ceiling(
    val: Sequence[Sequence[float]], test: Sequence[Sequence[float]], trainings: int = CEILING_TRAININGS
) -> dict[str, Any] | None:
    """How close to the reference's optimum a perfect search can come when it scores groupings on
    ``trainings`` trainings per group network, as the merge check does (None with fewer than
    ``2 * trainings`` trainings in the reference).

    ``val[t][p]`` and ``test[t][p]`` are training t's costs of partition p. The trainings are cut
    into disjoint draws of ``trainings``; each draw picks the partition with the lowest mean
    validation cost over all partitions (an exhaustive search on those scores), which is scored like
    a found grouping against the mean of the other trainings: its test-cost gap to their validation
    optimum. The share of draws within 2%, and the mean gap, bound what any validation-scored search
    with that many trainings reaches on this data: training noise and the validation split's own
    sampling put the rest out of reach."""
    if len(val) < 2 * trainings:
        return None
    draws = len(val) // trainings
    gaps = []
    for d in range(draws):
        chosen = range(d * trainings, (d + 1) * trainings)
        rest = [t for t in range(len(val)) if t not in chosen]
        pick = min(range(len(val[0])), key=lambda p: statistics.fmean(val[t][p] for t in chosen))
        ref_val = [statistics.fmean(val[t][p] for t in rest) for p in range(len(val[0]))]
        optimum = min(range(len(ref_val)), key=ref_val.__getitem__)
        best = statistics.fmean(test[t][optimum] for t in rest)
        gaps.append(100.0 * (statistics.fmean(test[t][pick] for t in rest) - best) / best)
    return {
        "trainings": trainings,
        "draws": draws,
        "within_2pct": sum(g <= 2.0 for g in gaps) / draws,
        "gap_percent": statistics.fmean(gaps),
    }


def random_yardstick(trained: Reference, names: Sequence[str], groups: int) -> dict[str, float]:
    """The test loss of the median partition into exactly ``groups`` groups (the ``random`` method
    draws these uniformly) and into at most ``groups`` groups, from the reference ``trained``."""
    costs = partition_costs(trained, names, groups, "test")
    k = max(1, min(groups, len(names)))
    return {
        "random_median_test_loss": statistics.median(c for p, c in costs.items() if len(p) == k),
        "any_median_test_loss": statistics.median(costs.values()),
    }


def _exhaustive_hoa(spec: SearchSpec, data: Any) -> list[list[str]]:
    """Exhaustive HOA's grouping: every subset's network (its own trainings, batched), the best
    partition into at most K groups on validation loss."""
    trained = subset_losses_joint(spec, data, list(range(1, 1 << len(spec.tasks))))
    return best_grouping(trained, spec.task_names, spec.groups)


def run_one(
    shape: SuiteShape,
    strategy: str,
    seed: int,
    *,
    exhaustive_max: int = 6,
    overrides: Sequence[str] = (),
    references: dict[str, Reference] | None = None,
    method: str | None = None,
    reference_trainings: int = 1,
    start: str | None = None,
) -> dict[str, Any]:
    """One (shape, seed) run: the search and its scores (see the module docstring).

    With ``method`` (one of ``GROUPING_METHODS``), that baseline decides the grouping instead, with
    the budget of ``strategy`` (its record's ``strategy`` is the method's name).
    ``references`` caches the exhaustive references (see :func:`reference_key`), so a second
    strategy with the same budget on the same shapes and seeds reuses them; ``reference_trainings``
    averages each subset's losses over that many independent trainings (less training noise in the
    optimum and the gaps). ``start`` (one of ``STARTS``): the search starts from that wrong grouping
    (:func:`wrong_start`); the record's ``strategy`` is ``"<strategy> from <start>"``."""
    spec = shape_spec(shape, strategy, seed, overrides)
    data = load_data(spec)
    truth = data.ground_truth if shape.planted else None
    start_groups = None
    if start is not None:
        best = truth
        if shape.exhaustive and len(spec.task_names) <= exhaustive_max:
            trained = mean_reference(reference_tables(shape, seed, spec, data, reference_trainings, references))
            best = best_grouping(trained, spec.task_names, spec.groups)
        start_groups = wrong_start(start, spec.task_names, spec.groups, seed, best)
        spec = shape_spec(shape, strategy, seed, [*overrides, f"strategy.init.groups={json.dumps(start_groups)}"])
    t0 = time.perf_counter()
    local = None
    if method == "hoa":
        found, model_test_loss = _exhaustive_hoa(spec, data), None
        seconds = time.perf_counter() - t0
    elif method is not None:
        from .baselines import run_method

        decided = run_method(method, spec, data, seed=seed)
        found, seconds = decided.groups, decided.decision_seconds
        model_test_loss = decided.metrics["totals"]["test"]["total_loss"]
    else:
        result = run_search(spec, None, progress=False, data=data)
        found, seconds = result.groups, time.perf_counter() - t0
        model_test_loss = result.test_loss
        local = result.local_search
    record: dict[str, Any] = {
        "shape": shape.name,
        "seed": seed,
        "strategy": method or (f"{strategy} from {start}" if start else strategy),
        "kind": "method" if method is not None else "strategy",
        "budget_of": strategy,
        "found": found,
        "planted": truth,  # None on real data: no partition to recover, the exhaustive reference only
        "ari": adjusted_rand_index(found, truth) if truth else None,
        "exact": _same(found, truth) if truth else None,
        "merged": _merged(found, truth) if truth else None,
        "search_seconds": seconds,
        "model_test_loss": model_test_loss,
    }
    if method is None:  # each stage's grouping, scored below: the ablation of the pipeline's stages
        record["stages"] = [{"stage": st.stage, "groups": st.groups, "seconds": st.seconds} for st in result.stages]
        if start_groups is not None:  # the wrong start, scored as a stage before all others
            record["stages"].insert(0, {"stage": f"start ({start})", "groups": start_groups, "seconds": 0.0})
    if local is not None and "rounds" in local:  # where the search's own grouping went: each round's best neighbour
        record["local_search"] = {
            "start": local["start"],
            "networks_trained": local["networks_trained"],
            "steps": [
                {
                    "val_loss": r["val_loss"],
                    "best": min(r["candidates"], key=lambda c: c["val_loss"]),
                    "accepted": r["accepted"] is not None,
                    "confirmation": r["confirmation"],
                }
                for r in local["rounds"]
            ],
        }
    return score(record, shape, spec, data, references, exhaustive_max, reference_trainings)


def wrong_start(
    kind: str, names: Sequence[str], groups: int, seed: int, best: Sequence[Sequence[str]] | None
) -> list[list[str]]:
    """A deliberately wrong starting grouping: ``swapped``, ``best`` (the optimum or the planted
    partition) with one task of each of two groups exchanged (or, with one group, one task moved to
    a group of its own); ``random``, a random partition into exactly K groups. Drawn from ``seed``."""
    from .errors import SpecError

    rng = random.Random(f"wrong-start/{kind}/{seed}")
    if kind == "random":
        return [[names[i] for i in block] for block in random_partition(len(names), groups, rng)]
    if kind != "swapped":
        raise SpecError(f"unknown start {kind!r}; starts: {', '.join(STARTS)}")
    if best is None:
        raise SpecError("a swapped start needs the optimum or a planted partition")
    blocks = [list(g) for g in best if g]
    if len(blocks) >= 2:
        a, b = rng.sample(range(len(blocks)), 2)
        i, j = rng.randrange(len(blocks[a])), rng.randrange(len(blocks[b]))
        blocks[a][i], blocks[b][j] = blocks[b][j], blocks[a][i]
    elif groups >= 2 and len(blocks[0]) >= 2:
        blocks.append([blocks[0].pop(rng.randrange(len(blocks[0])))])
    return blocks


def score(
    record: dict[str, Any],
    shape: SuiteShape,
    spec: SearchSpec,
    data: Any,
    references: dict[str, Reference] | None = None,
    exhaustive_max: int = 6,
    reference_trainings: int = 1,
) -> dict[str, Any]:
    """Score a record's found grouping against the exhaustive reference (or, for larger or image
    planted shapes, the planted partition trained from scratch); fills the reference fields, the
    gap, the median random partitions' gaps and, for ``reference_trainings`` >= 2, the reference's
    reliability (see the module docstring)."""
    from .errors import SpecError

    names, truth, found = spec.task_names, record.get("planted"), record["found"]
    if shape.exhaustive and len(names) <= exhaustive_max:
        tables = reference_tables(shape, record["seed"], spec, data, reference_trainings, references)
        trained = mean_reference(tables)

        def loss(split: str, groups: Sequence[Sequence[str]]) -> float:
            total = 0.0
            for g in groups:
                mask = sum(1 << names.index(t) for t in g)
                total += sum(trained[mask][split][t]["loss"] for t in g)
            return total

        optimum = best_grouping(trained, names, spec.groups)
        record.update(
            reference="exhaustive",
            reference_key=reference_key(shape, record["seed"], spec, reference_trainings),
            optimum=optimum,
            planted_is_optimum=_same(optimum, truth) if truth else None,
            found_test_loss=loss("test", found),
            planted_test_loss=loss("test", truth) if truth else None,
            optimum_test_loss=loss("test", optimum),
            reliability=reference_reliability(tables, names, spec.groups),
        )
        best = record["optimum_test_loss"]
        yardstick = random_yardstick(trained, names, spec.groups)
        record.update(
            yardstick,
            random_median_gap_percent=100.0 * (yardstick["random_median_test_loss"] - best) / best,
            any_median_gap_percent=100.0 * (yardstick["any_median_test_loss"] - best) / best,
            worse_than_random=record["found_test_loss"] > yardstick["random_median_test_loss"],
        )
        for stage in record.get("stages", []):  # the grouping after each stage, on the same reference
            stage_loss = loss("test", stage["groups"])
            stage.update(
                val_loss=loss("val", stage["groups"]),
                test_loss=stage_loss,
                gap_percent=100.0 * (stage_loss - best) / best,
                worse_than_random=stage_loss > yardstick["random_median_test_loss"],
            )
    elif truth:
        _, planted_m = train_partition(spec, data, truth)
        # the same partition is the same network (training it twice would only measure training noise)
        found_m = planted_m if record["exact"] else train_partition(spec, data, found)[1]
        record.update(
            reference="trained",
            found_test_loss=found_m["totals"]["test"]["total_loss"],
            planted_test_loss=planted_m["totals"]["test"]["total_loss"],
        )
        best = record["planted_test_loss"]
    else:
        raise SpecError(
            f"suite shape {shape.name!r} has no planted partition and {len(names)} tasks: it is scored against "
            f"the exhaustive reference only, which needs exhaustive_max >= {len(names)} (got {exhaustive_max})"
        )
    record["gap_percent"] = 100.0 * (record["found_test_loss"] - best) / best
    for stage in record.get("stages", []):
        stage["ari"] = adjusted_rand_index(stage["groups"], truth) if truth else None
    return record


def run_suite(
    strategy: str = "dmtg",
    shapes: Sequence[str] = SHORT_SHAPES,
    seeds: int | Sequence[int] = 3,
    out_dir: str | Path | None = None,
    *,
    exhaustive_max: int = 6,
    overrides: Sequence[str] = (),
    progress: Progress | None = None,
    resume: bool = False,
    method: str | None = None,
    reference_trainings: int = 1,
    start: str | None = None,
) -> list[dict[str, Any]]:
    """Run the suite; returns every run's record (and writes the report when ``out_dir`` is set).

    ``method``: score that baseline grouping method (see ``GROUPING_METHODS``) instead of the
    strategy, with the strategy's training budget. ``reference_trainings``: see :func:`run_one`; on
    ``resume``, runs scored against another reference are scored again (their groupings are kept)."""
    from .errors import SpecError, suggest

    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SpecError(f"unknown suite shape {unknown[0]!r}{suggest(unknown[0], SHAPES)}; shapes: {', '.join(SHAPES)}")
    if start is not None and (method is not None or start not in STARTS):
        raise SpecError(f"start {start!r}: one of {', '.join(STARTS)}, for strategies (not methods)")
    if method is not None and method not in GROUPING_METHODS:
        raise SpecError(
            f"unknown suite method {method!r}{suggest(method, GROUPING_METHODS)}; "
            f"methods: {', '.join(GROUPING_METHODS)}"
        )
    for name in shapes:  # a shape without a planted partition has only the exhaustive reference
        real = SHAPES[name]
        if not real.planted and not (real.exhaustive and real.n_tasks <= exhaustive_max):
            raise SpecError(
                f"suite shape {name!r} has no planted partition: it needs the exhaustive reference "
                f"(exhaustive_max >= {real.n_tasks}, got {exhaustive_max})"
            )
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    out = Path(out_dir) if out_dir is not None else None
    records: list[dict[str, Any]] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if resume and (out / "suite.json").is_file():
            records = json.loads((out / "suite.json").read_text())
    references: dict[str, Reference] = {}
    if out is not None and (out / "references.json").is_file():
        raw = json.loads((out / "references.json").read_text())
        references = {key: {int(m): v for m, v in nets.items()} for key, nets in raw.items()}

    def save() -> None:  # after every run: an interrupted suite resumes where it stopped
        assert out is not None
        (out / "suite.json").write_text(json.dumps(records, indent=1))
        (out / "references.json").write_text(json.dumps(references))

    label = method or (f"{strategy} from {start}" if start else strategy)
    stale = []  # resumed runs scored against another reference: scored again (their groupings kept)
    for i, r in enumerate(records):
        shape = SHAPES.get(r["shape"])
        if shape is None or r.get("reference") != "exhaustive" or r["strategy"] != label:
            continue
        spec = shape_spec(shape, r.get("budget_of", r["strategy"]), r["seed"], overrides)
        if (
            r.get("reference_key") != reference_key(shape, r["seed"], spec, reference_trainings)
            or "random_median_test_loss" not in r  # scored before the random yardstick: from the cached reference
        ):
            stale.append((i, shape, spec))
    for n, (i, shape, spec) in enumerate(stale):
        if progress is not None:
            progress(f"rescore {label}", n, len(stale), f"{shape.name} seed {records[i]['seed']}")
        records[i] = score(records[i], shape, spec, load_data(spec), references, exhaustive_max, reference_trainings)
        if out is not None:
            save()
    if progress is not None and stale:
        progress(f"rescore {label}", len(stale), len(stale))
    done = {(r["shape"], r["seed"], r["strategy"]) for r in records}
    todo = [(s, seed) for s in shapes for seed in seed_list if (s, seed, label) not in done]
    for n, (shape_name, seed) in enumerate(todo):
        if progress is not None:
            progress(f"suite {label}", n, len(todo), f"{shape_name} seed {seed}")
        records.append(
            run_one(
                SHAPES[shape_name],
                strategy,
                seed,
                exhaustive_max=exhaustive_max,
                overrides=overrides,
                references=references,
                method=method,
                reference_trainings=reference_trainings,
                start=start,
            )
        )
        if out is not None:
            save()
    if progress is not None:
        progress(f"suite {label}", len(todo), len(todo))
    if out is not None:
        save()
        write_suite_report(records, out)
    return records


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"3-5"`` -> 3, 4, 5; ``"0,4,7"`` -> those seeds."""
    from .errors import SpecError

    text = text.strip()
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        elif "-" in text.lstrip("-"):
            first, last = (int(part) for part in text.split("-", 1))
            seeds = list(range(first, last + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise SpecError(f"--seeds: expected a count (3), a range (3-5) or a list (0,4,7), got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise SpecError(f"--seeds: expected at least one seed, none negative or repeated, got {text!r}")
    return seeds


def _mean(values: Iterable[Any]) -> float | None:
    """The mean of the values that are not None (None when none is)."""
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _share(flags: Iterable[Any]) -> float | None:
    """The share of true values among those that are not None (None when none is)."""
    present = [bool(v) for v in flags if v is not None]
    return sum(present) / len(present) if present else None


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summarize_suite(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (strategy, shape): mean ARI, exact-recovery rate, merge rate (None on real-data shapes,
    which have no planted partition), mean and worst gap, the share of runs worse than the median
    random partition and that partition's mean gap (None without an exhaustive reference)."""
    rows = []
    for key in dict.fromkeys((r["strategy"], r["shape"]) for r in records):
        runs = [r for r in records if (r["strategy"], r["shape"]) == key]
        rows.append(
            {
                "strategy": key[0],
                "shape": key[1],
                "runs": len(runs),
                "ari": _mean(r.get("ari") for r in runs),
                "exact": _share(r.get("exact") for r in runs),
                "merged": _share(r.get("merged") for r in runs),
                "gap_mean": statistics.fmean(r["gap_percent"] for r in runs),
                "gap_max": max(r["gap_percent"] for r in runs),
                "within_2pct": sum(r["gap_percent"] <= 2.0 for r in runs) / len(runs),
                "reference": runs[0]["reference"],
                "planted_is_optimum": sum(bool(r.get("planted_is_optimum")) for r in runs),
                "seconds": statistics.fmean(r["search_seconds"] for r in runs),
                "worse_than_random": _share(r.get("worse_than_random") for r in runs),
                "random_gap": _mean(r.get("random_median_gap_percent") for r in runs),
            }
        )
    return rows


def criteria(records: Sequence[dict[str, Any]], strategy: str) -> dict[str, float]:
    """The quality bar: share of exhaustive runs within 2% of the optimum; share of runs where the
    planted partition is the optimum that recover it exactly; share of K > groups runs with no merge
    (planted shapes only); share of exhaustive runs worse than the median random partition."""
    mine = [r for r in records if r["strategy"] == strategy]
    exhaustive = [r for r in mine if r["reference"] == "exhaustive"]
    confirmed = [r for r in exhaustive if r.get("planted_is_optimum")]
    others = [r for r in exhaustive if r.get("planted_is_optimum") is False]  # None: no planted partition
    wide = [r for r in mine if r.get("planted") and r["shape"] in SHAPES and len(r["planted"]) < _k_of(r)]
    within = sum(r["gap_percent"] <= 2.0 for r in exhaustive)
    judged = [r for r in exhaustive if r.get("worse_than_random") is not None]
    worse = sum(r["worse_than_random"] for r in judged)
    return {
        "within_2pct_of_optimum": within / max(len(exhaustive), 1),
        "exact_when_planted_is_optimum": sum(r["exact"] for r in confirmed) / max(len(confirmed), 1),
        "no_merge_when_k_exceeds_groups": sum(not r["merged"] for r in wide) / max(len(wide), 1),
        "worse_than_random": worse / max(len(judged), 1),
        "runs": len(mine),
        "exhaustive_runs": len(exhaustive),
        "within_2pct_runs": within,
        "confirmed_runs": len(confirmed),
        # within 2% where the planted partition is the optimum, and on planted shapes where it is not
        "within_2pct_confirmed_runs": sum(r["gap_percent"] <= 2.0 for r in confirmed),
        "other_runs": len(others),
        "within_2pct_other_runs": sum(r["gap_percent"] <= 2.0 for r in others),
        "wide_runs": len(wide),
        "yardstick_runs": len(judged),
        "worse_than_random_runs": worse,
    }


def _k_of(record: dict[str, Any]) -> int:
    return SHAPES[record["shape"]].groups


def write_suite_report(records: Sequence[dict[str, Any]], out: Path) -> None:
    """``suite.md`` and ``suite.png`` from the records."""
    rows = summarize_suite(records)
    lines = [
        "| strategy | shape | runs | mean ARI | exact | merged | gap % mean | gap % max | within 2% | reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['shape']} | {r['runs']} | {_cell(r['ari'], '.2f')} | {_cell(r['exact'], '.0%')} "
            f"| {_cell(r['merged'], '.0%')} | {r['gap_mean']:.1f} | {r['gap_max']:.1f} | {r['within_2pct']:.0%} "
            f"| {r['reference']} |"
        )
    lines.append("")
    lines.extend(_bar_table(records))
    lines.append("")
    lines.extend(_pivot(records))
    lines.append("")
    for strategy in dict.fromkeys(r["strategy"] for r in records):
        c = criteria(records, strategy)
        split = []
        if c["confirmed_runs"]:
            split.append(
                f"{c['within_2pct_confirmed_runs']} of {c['confirmed_runs']} where the planted partition is the optimum"
            )
        if c["other_runs"]:
            split.append(f"{c['within_2pct_other_runs']} of {c['other_runs']} where it is not")
        split_text = f" ({', '.join(split)})" if split else ""
        parts = [
            f"within 2% of the exhaustive optimum in {c['within_2pct_of_optimum']:.0%} of {c['exhaustive_runs']} "
            f"exhaustive runs{split_text}"
            if c["exhaustive_runs"]
            else "no exhaustive runs",
        ]
        if c["yardstick_runs"]:
            parts.append(
                f"worse than the median random partition in {c['worse_than_random']:.0%} "
                f"({c['worse_than_random_runs']} of {c['yardstick_runs']})"
            )
        if c["confirmed_runs"]:
            parts.append(
                f"planted partition recovered exactly in {c['exact_when_planted_is_optimum']:.0%} of "
                f"{c['confirmed_runs']} runs where it is the optimum"
            )
        if c["wide_runs"]:
            parts.append(
                f"no merge in {c['no_merge_when_k_exceeds_groups']:.0%} of {c['wide_runs']} runs "
                "with K > planted groups"
            )
        lines.append(f"- `{strategy}`: " + "; ".join(parts) + f" ({c['runs']} runs).")
    lines.extend(_against(records, "tag"))
    lines.extend(_time_ratios(records))
    for table in (_stage_table(records), _start_table(records)):
        if table:
            lines.append("")
            lines.extend(table)
    lines.append("")
    lines.append("gap %: found grouping's test loss above the optimum's (exhaustive) or the planted partition's.")
    reference = _reference_table(records)
    if reference:
        lines.append("")
        lines.extend(reference)
    (out / "suite.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(rows, out / "suite.png")


def stage_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (strategy, stage), over the strategy's exhaustive runs: the grouping after that stage
    scored on the same reference (share within 2% of the optimum, mean gap, share worse than the
    median random partition, mean ARI where planted) and the mean seconds up to the end of that
    stage (the stages' own seconds summed; the affinity scout's are part of the search's).

    On planted shapes the share within 2% is also split by whether the planted partition is the
    exhaustive optimum (``within_2pct_planted``, ``within_2pct_other``, with their run counts; None
    without such runs): a stage that recovers the planted structure is right where the structure
    is the optimum and wrong where the optimum is coarser or differs (larger groups regularising
    binary, noisy or mixed targets), so the split tells recovering the structure from finding the
    optimum."""
    rows = []
    for label in dict.fromkeys(r["strategy"] for r in records):
        runs = [r for r in records if r["strategy"] == label and r.get("stages") and r["reference"] == "exhaustive"]
        order = list(dict.fromkeys(st["stage"] for r in runs for st in r["stages"]))
        for name in order:
            scored, spent, planted = [], [], []  # planted: each run's planted_is_optimum (None: not planted)
            for r in runs:
                stages = r["stages"]
                at = next((i for i, st in enumerate(stages) if st["stage"] == name), None)
                if at is None or "gap_percent" not in stages[at]:
                    continue
                scored.append(stages[at])
                spent.append(sum(st["seconds"] for st in stages[: at + 1] if st["stage"] != "affinity"))
                planted.append(r.get("planted_is_optimum"))
            if not scored:
                continue
            split = {}
            for key, wanted in (("planted", True), ("other", False)):
                part = [st for st, p in zip(scored, planted) if p is wanted]
                split[f"within_2pct_{key}"] = sum(st["gap_percent"] <= 2.0 for st in part) / len(part) if part else None
                split[f"runs_{key}"] = len(part)
            rows.append(
                {
                    "strategy": label,
                    "stage": name,
                    "runs": len(scored),
                    **split,
                    "within_2pct": sum(st["gap_percent"] <= 2.0 for st in scored) / len(scored),
                    "gap_mean": statistics.fmean(st["gap_percent"] for st in scored),
                    "worse_than_random": _share(st.get("worse_than_random") for st in scored),
                    "ari": _mean(st.get("ari") for st in scored),
                    "seconds": statistics.fmean(spent),
                }
            )
    return rows


def _stage_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """The ablation of the pipeline's stages (:func:`stage_rows`) as a markdown table."""
    rows = stage_rows(records)
    if not rows:
        return []
    lines = [
        "Each stage's grouping (exhaustive runs; seconds: mean time up to the end of the stage; within 2% "
        "also where the planted partition is the optimum and where it is not, run counts in brackets):",
        "",
        "| strategy | after stage | runs | within 2% of optimum | where planted is optimum | where it is not "
        "| mean gap % | worse than median random | mean ARI | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def part(r: dict[str, Any], key: str) -> str:
        share = r[f"within_2pct_{key}"]
        return f"{share:.0%} ({r[f'runs_{key}']})" if share is not None else "-"

    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['stage']} | {r['runs']} | {r['within_2pct']:.0%} | {part(r, 'planted')} "
            f"| {part(r, 'other')} | {r['gap_mean']:.1f} "
            f"| {_cell(r['worse_than_random'], '.0%')} | {_cell(r['ari'], '.2f')} | {r['seconds']:.1f} |"
        )
    return lines


def start_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per strategy run from a wrong start (``dmtg suite --start``), over its exhaustive runs: the
    share whose final grouping is at least as good as the start on the reference's validation loss,
    the share within 2% of the optimum, the share where the relaxation's grouping (stage ``search``)
    differs from the start, and the start's and the final grouping's mean gaps."""
    rows = []
    for label in dict.fromkeys(r["strategy"] for r in records):
        runs = [
            r
            for r in records
            if r["strategy"] == label
            and r["reference"] == "exhaustive"
            and r.get("stages")
            and r["stages"][0]["stage"].startswith("start")
        ]
        if not runs:
            continue
        starts = [r["stages"][0] for r in runs]
        finals = [r["stages"][-1] for r in runs]
        searched = [next((st for st in r["stages"] if st["stage"] == "search"), r["stages"][-1]) for r in runs]
        rows.append(
            {
                "strategy": label,
                "runs": len(runs),
                "as_good_as_start": sum(f["val_loss"] <= st["val_loss"] + 1e-12 for f, st in zip(finals, starts))
                / len(runs),
                "within_2pct": sum(f["gap_percent"] <= 2.0 for f in finals) / len(runs),
                "moved": sum(not _same(se["groups"], st["groups"]) for se, st in zip(searched, starts)) / len(runs),
                "start_gap": statistics.fmean(st["gap_percent"] for st in starts),
                "final_gap": statistics.fmean(f["gap_percent"] for f in finals),
            }
        )
    return rows


def _start_table(records: Sequence[dict[str, Any]]) -> list[str]:
    rows = start_rows(records)
    if not rows:
        return []
    lines = [
        "From a wrong start (exhaustive runs; validation loss of the reference's networks):",
        "",
        "| strategy | runs | final at least as good as the start | final within 2% of optimum "
        "| relaxation left the start | start gap % | final gap % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['runs']} | {r['as_good_as_start']:.0%} | {r['within_2pct']:.0%} "
            f"| {r['moved']:.0%} | {r['start_gap']:.1f} | {r['final_gap']:.1f} |"
        )
    return lines


def _bar_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """One row per strategy or method over its exhaustive runs: the quality bar side by side, and
    the share of runs whose grouping is worse than the median random partition."""
    lines = [
        "| strategy or method | exhaustive runs | within 2% of optimum | exact where planted is optimum "
        "| no merge, K > groups | worse than median random | mean gap % | mean ARI | median seconds to groups |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in dict.fromkeys(r["strategy"] for r in records):
        runs = [r for r in records if r["strategy"] == label and r["reference"] == "exhaustive"]
        if not runs:
            continue
        c = criteria(runs, label)
        exact = f"{c['exact_when_planted_is_optimum']:.0%} ({c['confirmed_runs']})" if c["confirmed_runs"] else "-"
        wide = f"{c['no_merge_when_k_exceeds_groups']:.0%} ({c['wide_runs']})" if c["wide_runs"] else "-"
        worse = f"{c['worse_than_random']:.0%} ({c['worse_than_random_runs']})" if c["yardstick_runs"] else "-"
        lines.append(
            f"| {label} | {len(runs)} | {c['within_2pct_of_optimum']:.0%} ({c['within_2pct_runs']}) | {exact} | {wide} "
            f"| {worse} | {statistics.fmean(r['gap_percent'] for r in runs):.1f} "
            f"| {_cell(_mean(r.get('ari') for r in runs), '.2f')} "
            f"| {statistics.median(r['search_seconds'] for r in runs):.1f} |"
        )
    return lines


def _reference_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """One row per shape (and training budget) over its exhaustive references, one per seed: the
    gaps of the median random partitions and, where the reference averages R >= 2 trainings, its
    reliability (means over seeds; see :func:`reference_reliability`)."""
    references: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in records:
        key = r.get("reference_key")
        if r["reference"] != "exhaustive" or key is None or "random_median_gap_percent" not in r:
            continue
        _, seed, *budget = key.split("/")  # shape/seed/budget.../reference-xR
        references.setdefault((r["shape"], "/".join(budget)), {})[seed] = r
    if not references:
        return []
    shapes = [shape for shape, _ in references]
    lines = [
        "The exhaustive reference per shape (means over seeds). Median random partition: the gap of the median "
        "partition into exactly K groups (what `random` draws) and into at most K groups. Reliability, where "
        "the reference averages R >= 2 trainings: the mean Pearson correlation between two trainings' costs of "
        "every partition into at most K groups (pairwise) and between the means of the first and the second "
        "half of the trainings (split-half), on validation and test loss. A reliability near 1 means the "
        "trainings rank the groupings alike; near 0, the reference cannot rank groupings, and the gaps "
        "above then measure training noise, not grouping quality. Ceiling, where the reference has R >= "
        f"{2 * CEILING_TRAININGS} trainings: an exhaustive search scoring every partition on {CEILING_TRAININGS} "
        "trainings (as the merge check scores its candidates), scored against the mean of the other trainings: "
        "its share of draws within 2% of their optimum and its mean gap, the most a search that chooses on "
        "validation loss can reach on this data.",
        "",
        "| shape | seeds | trainings | median random gap %, exactly K | at most K | pairwise r, val "
        "| pairwise r, test | split-half r, val | split-half r, test | ceiling: within 2% | ceiling: gap % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (shape, budget), by_seed in references.items():
        runs = list(by_seed.values())
        rel: list[dict[str, Any]] = [r["reliability"] for r in runs if r.get("reliability")]

        def mean_of(split: str, kind: str, rel: list[Any] = rel) -> str:
            return _cell(_mean(x[split][kind] for x in rel), ".2f")

        label = shape if shapes.count(shape) == 1 else f"{shape} (budget of {runs[0].get('budget_of', '?')})"
        trainings = budget.rsplit("reference-x", 1)[-1]
        ceilings = [x["ceiling"] for x in rel if x.get("ceiling")]
        lines.append(
            f"| {label} | {len(runs)} | {trainings} "
            f"| {statistics.fmean(r['random_median_gap_percent'] for r in runs):.1f} "
            f"| {statistics.fmean(r['any_median_gap_percent'] for r in runs):.1f} "
            f"| {mean_of('val', 'pairwise')} | {mean_of('test', 'pairwise')} "
            f"| {mean_of('val', 'split_half')} | {mean_of('test', 'split_half')} "
            f"| {_cell(_mean(c['within_2pct'] for c in ceilings), '.0%')} "
            f"| {_cell(_mean(c['gap_percent'] for c in ceilings), '.1f')} |"
        )
    return lines


def _pivot(records: Sequence[dict[str, Any]]) -> list[str]:
    """Share of runs within 2% of the exhaustive optimum, one row per shape, one column per strategy."""
    labels = list(dict.fromkeys(r["strategy"] for r in records))
    shapes = list(dict.fromkeys(r["shape"] for r in records if r["reference"] == "exhaustive"))
    if not shapes:
        return []
    lines = ["| within 2% of optimum | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for shape in shapes:
        cells = []
        for label in labels:
            runs = [
                r for r in records if (r["strategy"], r["shape"]) == (label, shape) and r["reference"] == "exhaustive"
            ]
            cells.append(f"{sum(r['gap_percent'] <= 2.0 for r in runs) / len(runs):.0%}" if runs else "-")
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return lines


def _against(records: Sequence[dict[str, Any]], baseline: str) -> list[str]:
    """Lines comparing each other strategy's grouping with ``baseline``'s on the same shape and seed
    (test loss of the grouping under the same reference; a strategy with another training budget
    has another reference and is not compared)."""
    theirs = {
        (r["shape"], r["seed"], r.get("reference_key")): r
        for r in records
        if r["strategy"] == baseline and r["reference"] == "exhaustive"
    }  # the same reference: the same training budget and reference trainings
    lines = []
    for label in dict.fromkeys(r["strategy"] for r in records):
        if label == baseline:
            continue
        pairs = [
            (r, theirs[(r["shape"], r["seed"], r.get("reference_key"))])
            for r in records
            if r["strategy"] == label
            and r["reference"] == "exhaustive"
            and (r["shape"], r["seed"], r.get("reference_key")) in theirs
        ]
        if not pairs:
            continue
        better = sum(a["found_test_loss"] < b["found_test_loss"] - 1e-12 for a, b in pairs)
        same = sum(abs(a["found_test_loss"] - b["found_test_loss"]) <= 1e-12 for a, b in pairs)
        lines.append(
            f"- `{label}` against `{baseline}`'s grouping on the same shape and seed: mean gap "
            f"{statistics.fmean(a['gap_percent'] for a, _ in pairs):.1f}% against "
            f"{statistics.fmean(b['gap_percent'] for _, b in pairs):.1f}%; lower test loss in {better}, the same "
            f"grouping's in {same}, higher in {len(pairs) - better - same} of {len(pairs)} runs."
        )
    return lines


def _time_ratios(records: Sequence[dict[str, Any]]) -> list[str]:
    """Lines comparing each strategy's search time with the first strategy's on the same shapes and
    seeds (median of the per-run ratios; the runs of one suite command are side by side)."""
    strategies = list(dict.fromkeys(r["strategy"] for r in records))
    seconds = {(r["strategy"], r["shape"], r["seed"]): r["search_seconds"] for r in records}
    lines = []
    for strategy in strategies[1:]:
        ratios = [
            seconds[(strategy, shape, seed)] / seconds[(strategies[0], shape, seed)]
            for (s, shape, seed) in seconds
            if s == strategy and (strategies[0], shape, seed) in seconds and seconds[(strategies[0], shape, seed)] > 0
        ]
        if ratios:
            lines.append(
                f"- search time `{strategy}` / `{strategies[0]}` on the same shape and seed: median "
                f"{statistics.median(ratios):.2f} (range {min(ratios):.2f} to {max(ratios):.2f}, {len(ratios)} runs)."
            )
    return lines


def _plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Left: mean ARI per shape with a planted partition; right: mean gap per shape, with the median
    random partition's gap (exactly K groups) as a black tick where there is an exhaustive reference."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    planted = [s for s in shapes if any(r["shape"] == s and r["ari"] is not None for r in rows)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(strategies), 1)
    for i, strategy in enumerate(strategies):
        by_shape = {r["shape"]: r for r in rows if r["strategy"] == strategy}
        aris = [by_shape[s]["ari"] if s in by_shape and by_shape[s]["ari"] is not None else 0 for s in planted]
        ax1.bar([j + i * width for j in range(len(planted))], aris, width, label=strategy)
        gaps = [by_shape[s]["gap_mean"] if s in by_shape else 0 for s in shapes]
        ax2.bar([j + i * width for j in range(len(shapes))], gaps, width, label=strategy)
    random_gaps = [(j, _mean(r["random_gap"] for r in rows if r["shape"] == s)) for j, s in enumerate(shapes)]
    marks = [(j, g) for j, g in random_gaps if g is not None]
    if marks:
        ax2.hlines(
            [g for _, g in marks], [j - width / 2 for j, _ in marks], [j + 0.8 - width / 2 for j, _ in marks],
            colors="black", linewidth=1.5, label="median random partition",
        )  # fmt: skip
        ax2.legend(fontsize=8)
    for ax, names, label in (
        (ax1, planted, "mean adjusted Rand index"),
        (ax2, shapes, "test-loss gap to the best partition, %"),
    ):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    ax1.set_ylim(-0.3, 1.05)
    if planted:
        ax1.legend(fontsize=8)
    else:
        ax1.text(0.5, 0.5, "no planted partition (real data)", ha="center", va="center", transform=ax1.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
