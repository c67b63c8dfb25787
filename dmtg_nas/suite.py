"""The planted benchmark suite: does a strategy find the groups that are there?

Each *shape* is a planted data set (group sizes, K, noise, task types, relation, encoder). For every
shape and seed the suite runs one search with the strategy under test and scores its grouping:

- the adjusted Rand index (ARI) against the planted partition, and whether a found group merges
  tasks of different planted groups;
- for shapes small enough (N <= ``exhaustive_max``), the exhaustive reference: one network per task
  subset (HOA's exhaustive training; batched in one process, each network trained exactly as it
  would be alone: :func:`~dmtg_nas.baselines.subset_losses_joint`), the best partition into at
  most K groups on validation loss, and, from the same networks, the test loss of the found,
  planted and optimal partitions, so the found grouping is compared with the optimum under
  identical training;
- otherwise the found and planted partitions are each trained from scratch with the same budget.

Baseline grouping methods of the side-by-side benchmark (``tag``, ``hoa-pairs``, ``random``, ...)
run on the same shapes, seeds and training budget as the ``dmtg`` preset (``run_suite(method=...)``,
``dmtg suite --method tag``): their grouping is scored exactly like a strategy's, and
``search_seconds`` is the time until their groups were decided.

``run_suite`` writes ``suite.json`` (every run), ``suite.md`` (per-shape summary and the pass rates
of the quality criteria) and ``suite.png``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .components import load_data
from .config import SearchSpec, load_spec
from .engine.batched import subset_losses_joint, subset_losses_seeded
from .engine.train import train_partition
from .partitions import best_partition, members
from .pipeline.outputs import adjusted_rand_index
from .pipeline.run import run_search
from .progress import Progress

__all__ = [
    "Shape",
    "SHAPES",
    "SHORT_SHAPES",
    "best_grouping",
    "exhaustive_reference",
    "parse_seeds",
    "reference_table",
    "run_suite",
    "score",
    "shape_spec",
]

GROUPING_METHODS = ("tag", "hoa", "hoa-pairs", "random", "naive", "stl")  # baselines that decide a grouping


@dataclass(frozen=True)
class Shape:
    """One planted problem of the suite."""

    name: str
    group_sizes: tuple[int, ...]
    groups: int  # K
    noise: float = 0.1
    types: str = "regression"  # regression | binary | mixed
    relation: str = "random"
    image: bool = False  # 8x8 images and a small timm CNN instead of vectors and an mlp
    samples: int = 3000
    overrides: tuple[str, ...] = field(default_factory=tuple)
    exhaustive: bool = True  # False: too costly to train every subset (conv encoders train one by one)

    @property
    def n_tasks(self) -> int:
        return sum(self.group_sizes)


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in [
        Shape("pairs-k3", (2, 2, 2), 3),
        Shape("triples-k2", (3, 3), 2),
        Shape("pairs-k4", (2, 2, 2), 4),  # more branches than planted groups: must not merge
        Shape("uneven-k2", (4, 2), 2),
        Shape("opposed-k3", (2, 2, 2), 3, relation="opposed"),
        Shape("binary-k3", (2, 2, 2), 3, types="binary"),
        Shape("mixed-k3", (2, 2, 2), 3, types="mixed"),
        Shape("noisy-k3", (2, 2, 2), 3, noise=0.5),
        Shape("five-k5", (2, 2, 2, 2, 2), 5),
        Shape("default-k3", (2, 3, 4), 3),
        Shape("image-k3", (2, 2, 2), 3, image=True, samples=2000, exhaustive=False),
    ]
}
SHORT_SHAPES = ("pairs-k3", "pairs-k4", "opposed-k3", "mixed-k3")


def shape_spec(shape: Shape, strategy: str, seed: int, overrides: Sequence[str] = ()) -> SearchSpec:
    """The search spec of one shape and seed (data seed = training seed = ``seed``)."""
    n = shape.n_tasks
    if shape.types == "mixed":
        types = ["regression" if i % 2 == 0 else "binary" for i in range(n)]
    else:
        types = [shape.types] * n
    doc: dict[str, Any] = {
        "name": f"suite-{shape.name}",
        "tasks": [{"name": f"t{i + 1}", "type": types[i]} for i in range(n)],
        "dataset": {
            "name": "planted",
            "group_sizes": list(shape.group_sizes),
            "input_dim": 32,
            "latent_dim": 8,
            "noise": shape.noise,
            "samples": shape.samples,
            "seed": seed,
            "relation": shape.relation,
            "split": {"val": 0.2, "test": 0.2, "seed": seed},
        },
        "backbone": {"name": "mlp", "hidden": [32, 8]},
        "groups": shape.groups,
        "strategy": strategy,
    }
    if shape.image:
        doc["dataset"].update({"input_dim": 64, "image_size": 8})
        doc["backbone"] = {"name": "timm:test_resnet", "kwargs": {}}
    return load_spec(doc, [*shape.overrides, *overrides, f"strategy.seed={seed}"])


def _merged(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> bool:
    label = {t: i for i, g in enumerate(truth) for t in g}
    return any(len({label[t] for t in g}) > 1 for g in found)


def _same(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> bool:
    return sorted(map(sorted, a)) == sorted(map(sorted, b))


Reference = dict[int, dict[str, dict[str, dict[str, float]]]]


REFERENCE_SEED_OFFSET = 100_003  # the reference's trainings use seeds no method under test uses


def _budget_key(shape: Shape, seed: int, spec: SearchSpec) -> str:
    """Shape, seed and training budget (epochs, batch size, optimizer, schedule; not the grouping method)."""
    st = spec.strategy
    budget = (
        st.epochs + st.finetune.epochs,
        st.batch_size,
        st.optimizer.model_dump_json(),
        st.lr_schedule.model_dump_json(),
    )
    return f"{shape.name}/{seed}/" + "/".join(map(str, budget))


def reference_key(shape: Shape, seed: int, spec: SearchSpec, trainings: int) -> str:
    """The key of one exhaustive reference in a record: budget and the number of trainings averaged."""
    return f"{_budget_key(shape, seed, spec)}/reference-x{trainings}"


def reference_table(
    shape: Shape, seed: int, spec: SearchSpec, data: Any, trainings: int, cache: dict[str, Reference] | None = None
) -> Reference:
    """The exhaustive reference of a shape and seed at ``spec``'s budget (see :func:`exhaustive_reference`),
    its trainings cached in ``cache`` under ``<budget>/reference/training-r``."""
    return exhaustive_reference(spec, data, trainings, cache, f"{_budget_key(shape, seed, spec)}/reference")


def best_grouping(trained: Reference, names: Sequence[str], groups: int) -> list[list[str]]:
    """The best partition into at most ``groups`` groups on the subset networks' validation losses."""
    blocks, _ = best_partition(
        len(names), lambda m: sum(trained[m]["val"][names[i]]["loss"] for i in members(m)), groups
    )
    return [[names[i] for i in b] for b in blocks]


def exhaustive_reference(
    spec: SearchSpec, data: Any, trainings: int = 1, cache: dict[str, Reference] | None = None, key: str = ""
) -> Reference:
    """Every task subset's network, trained ``trainings`` times independently (seeds offset by
    ``REFERENCE_SEED_OFFSET``, so no search or baseline shares an initialisation with them); the
    per-task metrics are averaged over the trainings. With ``cache``, each training is kept under
    ``key/training-r`` and reused (a reference of 3 trainings after one of 1 trains 2 more)."""
    masks = list(range(1, 1 << len(spec.tasks)))
    names = [f"{key}/training-{r}" for r in range(trainings)]
    missing = [r for r in range(trainings) if cache is None or names[r] not in cache]
    # the missing trainings side by side in one batched computation, each with its own seed
    seeds = [(spec.strategy.seed + REFERENCE_SEED_OFFSET * (r + 1), masks) for r in missing]
    fresh = dict(zip(missing, subset_losses_seeded(spec, data, seeds) if missing else []))
    if cache is not None:
        cache.update({names[r]: t for r, t in fresh.items()})
    tables = [fresh[r] if r in fresh else cache[names[r]] for r in range(trainings)]  # type: ignore[index]
    return {
        m: {
            split: {
                task: {k: statistics.fmean(t[m][split][task][k] for t in tables) for k in rows}
                for task, rows in tables[0][m][split].items()
            }
            for split in tables[0][m]
        }
        for m in masks
    }


def _exhaustive_hoa(spec: SearchSpec, data: Any) -> list[list[str]]:
    """Exhaustive HOA's grouping: every subset's network (its own trainings, batched), the best
    partition into at most K groups on validation loss."""
    trained = subset_losses_joint(spec, data, list(range(1, 1 << len(spec.tasks))))
    return best_grouping(trained, spec.task_names, spec.groups)


def run_one(
    shape: Shape,
    strategy: str,
    seed: int,
    *,
    exhaustive_max: int = 6,
    overrides: Sequence[str] = (),
    references: dict[str, Reference] | None = None,
    method: str | None = None,
    reference_trainings: int = 1,
) -> dict[str, Any]:
    """One (shape, seed) run: the search and its scores (see the module docstring).

    With ``method`` (one of ``GROUPING_METHODS``), that baseline decides the grouping instead, with
    the budget of ``strategy`` (its record's ``strategy`` is the method's name).
    ``references`` caches the exhaustive references (see :func:`reference_key`), so a second
    strategy with the same budget on the same shapes and seeds reuses them; ``reference_trainings``
    averages each subset's losses over that many independent trainings (less training noise in the
    optimum and the gaps)."""
    spec = shape_spec(shape, strategy, seed, overrides)
    data = load_data(spec)
    truth = data.ground_truth or []
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
        "strategy": method or strategy,
        "kind": "method" if method is not None else "strategy",
        "budget_of": strategy,
        "found": found,
        "planted": truth,
        "ari": adjusted_rand_index(found, truth),
        "exact": _same(found, truth),
        "merged": _merged(found, truth),
        "search_seconds": seconds,
        "model_test_loss": model_test_loss,
    }
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


def score(
    record: dict[str, Any],
    shape: Shape,
    spec: SearchSpec,
    data: Any,
    references: dict[str, Reference] | None = None,
    exhaustive_max: int = 6,
    reference_trainings: int = 1,
) -> dict[str, Any]:
    """Score a record's found grouping against the exhaustive reference (or, for larger or image
    shapes, the planted partition trained from scratch); fills the reference fields and the gap."""
    names, truth, found = spec.task_names, record["planted"], record["found"]
    if shape.exhaustive and len(names) <= exhaustive_max:
        trained = reference_table(shape, record["seed"], spec, data, reference_trainings, references)

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
            planted_is_optimum=_same(optimum, truth),
            found_test_loss=loss("test", found),
            planted_test_loss=loss("test", truth),
            optimum_test_loss=loss("test", optimum),
        )
    else:
        _, planted_m = train_partition(spec, data, truth)
        # the same partition is the same network (training it twice would only measure training noise)
        found_m = planted_m if record["exact"] else train_partition(spec, data, found)[1]
        record.update(
            reference="trained",
            found_test_loss=found_m["totals"]["test"]["total_loss"],
            planted_test_loss=planted_m["totals"]["test"]["total_loss"],
        )
    best = record.get("optimum_test_loss", record["planted_test_loss"])
    record["gap_percent"] = 100.0 * (record["found_test_loss"] - best) / best
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
) -> list[dict[str, Any]]:
    """Run the suite; returns every run's record (and writes the report when ``out_dir`` is set).

    ``method``: score that baseline grouping method (see ``GROUPING_METHODS``) instead of the
    strategy, with the strategy's training budget. ``reference_trainings``: see :func:`run_one`; on
    ``resume``, runs scored against another reference are scored again (their groupings are kept)."""
    from .errors import SpecError, suggest

    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SpecError(f"unknown suite shape {unknown[0]!r}{suggest(unknown[0], SHAPES)}; shapes: {', '.join(SHAPES)}")
    if method is not None and method not in GROUPING_METHODS:
        raise SpecError(
            f"unknown suite method {method!r}{suggest(method, GROUPING_METHODS)}; "
            f"methods: {', '.join(GROUPING_METHODS)}"
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

    stale = []  # resumed runs scored against another reference: scored again (their groupings kept)
    for i, r in enumerate(records):
        shape = SHAPES.get(r["shape"])
        if shape is None or r.get("reference") != "exhaustive" or r["strategy"] != (method or strategy):
            continue
        spec = shape_spec(shape, r.get("budget_of", r["strategy"]), r["seed"], overrides)
        if r.get("reference_key") != reference_key(shape, r["seed"], spec, reference_trainings):
            stale.append((i, shape, spec))
    for n, (i, shape, spec) in enumerate(stale):
        if progress is not None:
            progress(f"rescore {method or strategy}", n, len(stale), f"{shape.name} seed {records[i]['seed']}")
        records[i] = score(records[i], shape, spec, load_data(spec), references, exhaustive_max, reference_trainings)
        if out is not None:
            save()
    if progress is not None and stale:
        progress(f"rescore {method or strategy}", len(stale), len(stale))
    done = {(r["shape"], r["seed"], r["strategy"]) for r in records}

    label = method or strategy
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


def summarize_suite(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (strategy, shape): mean ARI, exact-recovery rate, merge rate, mean and worst gap."""
    rows = []
    for key in dict.fromkeys((r["strategy"], r["shape"]) for r in records):
        runs = [r for r in records if (r["strategy"], r["shape"]) == key]
        rows.append(
            {
                "strategy": key[0],
                "shape": key[1],
                "runs": len(runs),
                "ari": statistics.fmean(r["ari"] for r in runs),
                "exact": sum(r["exact"] for r in runs) / len(runs),
                "merged": sum(r["merged"] for r in runs) / len(runs),
                "gap_mean": statistics.fmean(r["gap_percent"] for r in runs),
                "gap_max": max(r["gap_percent"] for r in runs),
                "within_2pct": sum(r["gap_percent"] <= 2.0 for r in runs) / len(runs),
                "reference": runs[0]["reference"],
                "planted_is_optimum": sum(r.get("planted_is_optimum", False) for r in runs),
                "seconds": statistics.fmean(r["search_seconds"] for r in runs),
            }
        )
    return rows


def criteria(records: Sequence[dict[str, Any]], strategy: str) -> dict[str, float]:
    """The quality bar: share of exhaustive runs within 2% of the optimum; share of runs where the
    planted partition is the optimum that recover it exactly; share of K > groups runs with no merge."""
    mine = [r for r in records if r["strategy"] == strategy]
    exhaustive = [r for r in mine if r["reference"] == "exhaustive"]
    confirmed = [r for r in exhaustive if r.get("planted_is_optimum")]
    wide = [r for r in mine if len(r["planted"]) < _k_of(r)]
    within = sum(r["gap_percent"] <= 2.0 for r in exhaustive)
    return {
        "within_2pct_of_optimum": within / max(len(exhaustive), 1),
        "exact_when_planted_is_optimum": sum(r["exact"] for r in confirmed) / max(len(confirmed), 1),
        "no_merge_when_k_exceeds_groups": sum(not r["merged"] for r in wide) / max(len(wide), 1),
        "runs": len(mine),
        "exhaustive_runs": len(exhaustive),
        "within_2pct_runs": within,
        "confirmed_runs": len(confirmed),
        "wide_runs": len(wide),
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
            f"| {r['strategy']} | {r['shape']} | {r['runs']} | {r['ari']:.2f} | {r['exact']:.0%} | {r['merged']:.0%} "
            f"| {r['gap_mean']:.1f} | {r['gap_max']:.1f} | {r['within_2pct']:.0%} | {r['reference']} |"
        )
    lines.append("")
    lines.extend(_bar_table(records))
    lines.append("")
    lines.extend(_pivot(records))
    lines.append("")
    for strategy in dict.fromkeys(r["strategy"] for r in records):
        c = criteria(records, strategy)
        parts = [
            f"within 2% of the exhaustive optimum in {c['within_2pct_of_optimum']:.0%} of {c['exhaustive_runs']} "
            "exhaustive runs"
            if c["exhaustive_runs"]
            else "no exhaustive runs",
        ]
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
    lines.append("")
    lines.append("gap %: found grouping's test loss above the optimum's (exhaustive) or the planted partition's.")
    (out / "suite.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(rows, out / "suite.png")


def _bar_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """One row per strategy or method over its exhaustive runs: the quality bar side by side."""
    lines = [
        "| strategy or method | exhaustive runs | within 2% of optimum | exact where planted is optimum "
        "| no merge, K > groups | mean gap % | mean ARI | median seconds to groups |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in dict.fromkeys(r["strategy"] for r in records):
        runs = [r for r in records if r["strategy"] == label and r["reference"] == "exhaustive"]
        if not runs:
            continue
        c = criteria(runs, label)
        exact = f"{c['exact_when_planted_is_optimum']:.0%} ({c['confirmed_runs']})" if c["confirmed_runs"] else "-"
        wide = f"{c['no_merge_when_k_exceeds_groups']:.0%} ({c['wide_runs']})" if c["wide_runs"] else "-"
        lines.append(
            f"| {label} | {len(runs)} | {c['within_2pct_of_optimum']:.0%} ({c['within_2pct_runs']}) | {exact} | {wide} "
            f"| {statistics.fmean(r['gap_percent'] for r in runs):.1f} "
            f"| {statistics.fmean(r['ari'] for r in runs):.2f} "
            f"| {statistics.median(r['search_seconds'] for r in runs):.1f} |"
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
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(strategies), 1)
    for i, strategy in enumerate(strategies):
        by_shape = {r["shape"]: r for r in rows if r["strategy"] == strategy}
        xs = [j + i * width for j in range(len(shapes))]
        ax1.bar(xs, [by_shape[s]["ari"] if s in by_shape else 0 for s in shapes], width, label=strategy)
        ax2.bar(xs, [by_shape[s]["gap_mean"] if s in by_shape else 0 for s in shapes], width, label=strategy)
    for ax, label in ((ax1, "mean adjusted Rand index"), (ax2, "test-loss gap to the best partition, %")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    ax1.set_ylim(-0.3, 1.05)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
