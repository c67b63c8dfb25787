"""Replay the merge check's variants on a finished planted suite, from cached trainings.

The merge check (``dmtg_nas/localsearch.py``) decides on validation losses of group networks,
each trained from scratch; one small network's loss varies by several percent between trainings.
Which rule copes best with that noise (margin, averaged replicates, confirmation, single-task
moves), and how close does even exhaustive HOA come? Running the whole suite once per variant
would cost hours; the decisions only need every task subset's network, trained a few times.

For every exhaustive run of ``--strategy`` in SUITE_DIR/suite.json (its one-shot grouping is the
start: the record's ``local_search.start`` where there is one, else its found grouping), this
script trains every subset's network ``--replicates`` times (independent seeds, the merge check's
own seed convention: strategy seed + 7919 r; cached in SUITE_DIR/replicates.json), then runs the
real ``local_search`` with a scorer that reads those tables, once per rotation of the replicates
(more samples of the training noise), and scores the grouping it ends with exactly as the suite
does: its test loss under the suite's reference (SUITE_DIR/references.json, the reference the
record was scored with, whose trainings use seeds none of these use), against the reference's
optimum. "Exhaustive HOA" rows pick the best partition on the replicate tables themselves.

    python benchmarks/merge_check_variants.py runs/suite --strategy dmtg --replicates 3 --reference-trainings 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

from dmtg_nas.components import load_data
from dmtg_nas.engine.batched import subset_losses_seeded
from dmtg_nas.localsearch import SubsetScorer, local_search, masks_of
from dmtg_nas.partitions import best_partition, members
from dmtg_nas.suite import SHAPES, reference_table, shape_spec

Table = dict[int, dict[str, dict[str, dict[str, float]]]]

_MS_MOVES = {"moves": True, "merge_splits": True}  # merges, merge-splits and moves

VARIANTS: dict[str, dict[str, Any]] = {
    "one-shot grouping, no check": {"kind": "none"},
    "exhaustive HOA, 1 training per subset": {"kind": "hoa", "avg": 1},
    "exhaustive HOA, mean of 2 trainings": {"kind": "hoa", "avg": 2},
    "exhaustive HOA, mean of 3 trainings": {"kind": "hoa", "avg": 3},
    "merges, margin 1%, 1 training (previous default)": {"margin": 0.01, "avg": 1},
    "merges, margin 0, 1 training": {"margin": 0.0, "avg": 1},
    "merges, margin 1%, mean of 2": {"margin": 0.01, "avg": 2},
    "merges, then splits of merged groups, margin 1%, 1 training": {"margin": 0.01, "avg": 1, "splits": True},
    "merges, margin 0, mean of 2": {"margin": 0.0, "avg": 2},
    "merges, margin 0, 1 training + confirmation": {"margin": 0.0, "avg": 1, "confirm": True},
    "merges and moves, margin 0, 1 training": {"margin": 0.0, "avg": 1, "moves": True},
    "merges and moves, margin 0, mean of 2": {"margin": 0.0, "avg": 2, "moves": True},
    "merges and moves, margin 2%, mean of 2": {"margin": 0.02, "avg": 2, "moves": True},
    "merges and moves, margin 1%, mean of 3": {"margin": 0.01, "avg": 3, "moves": True},
    "merges and moves, margin 2%, mean of 3": {"margin": 0.02, "avg": 3, "moves": True},
    "merges and moves, margin 0, mean of 3": {"margin": 0.0, "avg": 3, "moves": True},
    "merges, splits and moves, margin 1%, mean of 3": {"margin": 0.01, "avg": 3, "moves": True, "splits": True},
    "merges, margin 1%, mean of 3": {"margin": 0.01, "avg": 3},
    "merges, splits and moves, margin 2%, mean of 3": {"margin": 0.02, "avg": 3, "moves": True, "splits": True},
    "merges and splits, margin 2%, mean of 3": {"margin": 0.02, "avg": 3, "splits": True},
    "merges, merge-splits and moves, margin 2%, 1 training": {"margin": 0.02, "avg": 1, **_MS_MOVES},
    "merges, merge-splits and moves, margin 2%, mean of 2": {"margin": 0.02, "avg": 2, **_MS_MOVES},
    "merges, merge-splits and moves, margin 1%, mean of 3 (default)": {"margin": 0.01, "avg": 3, **_MS_MOVES},
    "merges, merge-splits and moves, margin 2%, mean of 3": {"margin": 0.02, "avg": 3, **_MS_MOVES},
    "merges and merge-splits, margin 1%, mean of 3": {"margin": 0.01, "avg": 3, "merge_splits": True},
}


def _tables(path: Path, records: list[dict[str, Any]], overrides: list[str], replicates: int) -> dict[str, Table]:
    cache: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    from tqdm.auto import tqdm

    todo = [r for r in records if any(f"{r['shape']}/{r['seed']}/{k}" not in cache for k in range(1, replicates + 1))]
    for r in tqdm(todo, desc="replicate trainings", unit="run"):
        spec = shape_spec(SHAPES[r["shape"]], r.get("budget_of", r["strategy"]), r["seed"], overrides)
        keys = [k for k in range(1, replicates + 1) if f"{r['shape']}/{r['seed']}/{k}" not in cache]
        masks = list(range(1, 1 << len(spec.tasks)))
        # the missing replicates side by side in one batched computation, each with its own seed
        tables = subset_losses_seeded(spec, load_data(spec), [(spec.strategy.seed + 7919 * k, masks) for k in keys])
        cache.update({f"{r['shape']}/{r['seed']}/{k}": t for k, t in zip(keys, tables)})
        path.write_text(json.dumps(cache))
    return {key: {int(m): v for m, v in t.items()} for key, t in cache.items()}


def _loss(table: Table, names: list[str], split: str, partition: tuple[int, ...]) -> float:
    return sum(table[m][split][names[i]]["loss"] for m in partition for i in members(m))


def _best(table: Table, names: list[str], k: int) -> tuple[int, ...]:
    blocks, _ = best_partition(len(names), lambda m: _loss(table, names, "val", (m,)), k)
    return tuple(sorted(sum(1 << i for i in b) for b in blocks))


def replay(variant: dict[str, Any], runs: list[dict[str, Any]], replicates: int) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        names, k, reference, tabs = run["names"], run["k"], run["reference"], run["tables"]
        optimum = _best(reference, names, k)
        best = _loss(reference, names, "test", optimum)
        for rotation in range(replicates):
            use = [tabs[(rotation + j) % replicates] for j in range(variant.get("avg", 1))]
            spare = tabs[(rotation + variant.get("avg", 1)) % replicates]
            mean = {
                m: {
                    "val": {
                        t: {"loss": statistics.fmean(u[m]["val"][t]["loss"] for u in use)} for t in use[0][m]["val"]
                    }
                }
                for m in use[0]
            }
            networks = 0
            if variant.get("kind") == "none":
                partition = run["start"]
            elif variant.get("kind") == "hoa":
                partition = _best(mean, names, k)
            else:

                def train(masks: list[int], replicate: int, use: list[Table] = use, spare: Table = spare) -> Table:
                    table = use[replicate] if replicate < len(use) else spare  # past the scoring ones: confirmation
                    return {m: {"val": table[m]["val"]} for m in masks}

                outcome = local_search(
                    run["start"],
                    SubsetScorer(train, names, [1.0] * len(names), len(use)),
                    k,
                    margin=variant["margin"],
                    max_candidates=variant.get("max_candidates", 12),
                    rounds=4,
                    moves=variant.get("moves", False),
                    merge_splits=variant.get("merge_splits", False),
                    splits=variant.get("splits", False),
                    confirm=variant.get("confirm", False),
                )
                partition, networks = outcome.partition, outcome.networks_trained
            gap = 100 * (_loss(reference, names, "test", partition) - best) / best
            out.append(
                {
                    "shape": run["shape"],
                    "gap": gap,
                    "networks": networks,
                    "exact": partition == run["planted"],
                    "planted_is_optimum": optimum == run["planted"],
                    "merged": any(len({run["label"][i] for i in members(m)}) > 1 for m in partition),
                    "wide": len(run["planted"]) < k,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite_dir", type=Path)
    parser.add_argument("--strategy", default="dmtg-oneshot", help="whose groupings are the starts")
    parser.add_argument("--replicates", type=int, default=3, help="trainings per subset for the scores (>= 3)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--reference-trainings",
        type=int,
        default=0,
        help="score against a reference of this many trainings "
        "(cached in references.json, missing ones trained); default: the one each record was scored with",
    )
    parser.add_argument("--variants", default="", help="only variants whose name contains one of these (comma list)")
    args = parser.parse_args()
    if args.replicates < 3:
        parser.error("--replicates must be at least 3 (2 averaged + 1 to confirm)")
    records = [
        r
        for r in json.loads((args.suite_dir / "suite.json").read_text())
        if r["strategy"] == args.strategy and r["reference"] == "exhaustive"
    ]
    if not records:
        parser.error(f"no exhaustive runs of {args.strategy!r} in {args.suite_dir / 'suite.json'}")
    tables = _tables(args.suite_dir / "replicates.json", records, args.overrides, args.replicates)
    references = {
        k: {int(m): v for m, v in t.items()}
        for k, t in json.loads((args.suite_dir / "references.json").read_text()).items()
    }
    known = len(references)
    runs = []
    for r in records:
        spec = shape_spec(SHAPES[r["shape"]], r.get("budget_of", r["strategy"]), r["seed"], args.overrides)
        names = spec.task_names
        # as the record was scored, unless asked otherwise
        trainings = args.reference_trainings or int(r["reference_key"].rsplit("/reference-x", 1)[1])
        reference = reference_table(SHAPES[r["shape"]], r["seed"], spec, load_data(spec), trainings, references)
        planted = masks_of(r["planted"], names)
        start = r.get("local_search", {}).get("start", r["found"])
        runs.append(
            {
                "shape": r["shape"],
                "names": names,
                "k": spec.groups,
                "reference": reference,
                "tables": [tables[f"{r['shape']}/{r['seed']}/{k}"] for k in range(1, args.replicates + 1)],
                "start": masks_of(start, names),
                "planted": planted,
                "label": {i: g for g, m in enumerate(planted) for i in members(m)},
            }
        )
    if len(references) > known:  # reference trainings added: cached for the next replay
        (args.suite_dir / "references.json").write_text(json.dumps(references))
    used = (
        f"reference-x{args.reference_trainings}"
        if args.reference_trainings
        else records[0]["reference_key"].rsplit("/", 1)[1]
    )
    lines = [
        f"Merge check variants replayed on {len(runs)} exhaustive runs of `{args.strategy}` x {args.replicates} "
        f"rotations of the scoring trainings (reference: {used}).",
        "",
        "| variant | within 2% of optimum | exact where planted is optimum | no merge, K > groups | mean gap % "
        "| group networks per run (median) | worst shapes (within 2%) |",
        "|---|---|---|---|---|---|---|",
    ]
    wanted = [w for w in args.variants.split(",") if w]
    for name, variant in VARIANTS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        res = replay(variant, runs, args.replicates)
        by: dict[str, list[bool]] = {}
        for x in res:
            by.setdefault(x["shape"], []).append(x["gap"] <= 2.0)
        worst = sorted(by, key=lambda s: statistics.fmean(by[s]))[:2]
        pio = [x for x in res if x["planted_is_optimum"]]
        wide = [x for x in res if x["wide"]]
        lines.append(
            f"| {name} | {statistics.fmean(x['gap'] <= 2.0 for x in res):.1%} "
            f"| {statistics.fmean(x['exact'] for x in pio) if pio else float('nan'):.0%} "
            f"| {statistics.fmean(not x['merged'] for x in wide) if wide else float('nan'):.0%} "
            f"| {statistics.fmean(x['gap'] for x in res):.1f} "
            f"| {statistics.median(x['networks'] for x in res):g} "
            f"| {', '.join(f'{s} {statistics.fmean(by[s]):.0%}' for s in worst)} |"
        )
        print(lines[-1], flush=True)
    (args.suite_dir / "merge_check_variants.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
