"""What one all-task network would add to a grouping: a replay on a finished ``dmtg suite`` folder.

The similarity signals of the pipeline (the warm start's affinity, the relaxation) recover the
planted structure; where binary, noisy or mixed targets make a coarser grouping best they miss it
(docs/method/quality.md#structure-not-optimum). One network trained on all tasks is the cheapest
measurement of "coarser": the rule replayed here compares, for every group of a stage's grouping,
the group's validation loss in its own network with the same tasks' validation loss in the all-task
network, and merges the groups that do better in the all-task network into one (when there are at
least two of them). The groups' own networks and the all-task network are the suite's exhaustive
reference networks (each subset trained from scratch with the strategy's budget), so nothing is
trained here:

- ``mean``: the rule on the reference's mean over its trainings (the losses without training noise);
- ``one training``: the rule on each single training of the reference in turn (what a run that
  trains each network once would decide), its counts the mean over the trainings.

Every grouping is scored like the suite scores one: its test loss on the mean reference against the
validation optimum's. Prints a markdown table: within 2% of the optimum over all exhaustive runs, over
those where the planted partition is the optimum and over the others, and the mean gap.

    python benchmarks/all_task_merge.py runs/suite-structure --strategy dmtg --stage warm_start
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dmtg_nas.components import load_data
from dmtg_nas.partitions import members
from dmtg_nas.suite import SHAPES, Reference, mean_reference, reference_tables, shape_spec

Grouping = list[int]  # group masks over the tasks


def _loss(table: Reference, group: int, names: Sequence[str], network: int | None = None) -> float:
    """The validation loss of ``group``'s tasks in the network of ``network`` (default: the group's own)."""
    rows = table[group if network is None else network]["val"]
    return sum(rows[names[i]]["loss"] for i in members(group))


def merged(grouping: Grouping, table: Reference, names: Sequence[str]) -> Grouping:
    """The rule: the groups whose tasks have a lower validation loss in the all-task network than in
    their own network, merged into one group (at least two of them; otherwise ``grouping``)."""
    everything = (1 << len(names)) - 1
    better = [g for g in grouping if _loss(table, g, names, everything) < _loss(table, g, names)]
    if len(better) < 2:
        return list(grouping)
    return [g for g in grouping if g not in better] + [sum(better)]


def replay(records: Sequence[dict[str, Any]], references: dict[str, Reference], stage: str) -> dict[str, list]:
    """Per variant (``stage``, ``mean``, ``one training``), per run: ``(gap %, planted_is_optimum)``;
    ``one training`` holds one list per run (a gap per training)."""
    out: dict[str, list] = {"stage": [], "mean": [], "one training": []}
    for r in records:
        groups = next((st["groups"] for st in r.get("stages") or [] if st["stage"] == stage), None)
        if r.get("reference") != "exhaustive" or groups is None:
            continue
        spec = shape_spec(SHAPES[r["shape"]], r.get("budget_of", r["strategy"]), r["seed"])
        trainings = int(r["reference_key"].rsplit("/reference-x", 1)[1])  # as the record was scored
        # the suite's cached trainings (missing ones, e.g. from an interrupted suite, are trained)
        tables = reference_tables(SHAPES[r["shape"]], r["seed"], spec, load_data(spec), trainings, references)
        mean = mean_reference(tables)
        names = spec.task_names
        grouping = [sum(1 << names.index(t) for t in g) for g in groups]
        optimum = r["optimum_test_loss"]
        planted = r.get("planted_is_optimum")  # None: no planted partition
        out["stage"].append((_gap(grouping, mean, names, optimum), planted))
        out["mean"].append((_gap(merged(grouping, mean, names), mean, names, optimum), planted))
        out["one training"].append([(_gap(merged(grouping, t, names), mean, names, optimum), planted) for t in tables])
    return out


def _gap(grouping: Grouping, mean: Reference, names: Sequence[str], optimum: float) -> float:
    """The grouping's test loss on the mean reference above the optimum's, in percent (as the suite)."""
    test = sum(mean[g]["test"][names[i]]["loss"] for g in grouping for i in members(g))
    return 100.0 * (test - optimum) / optimum


def _row(label: str, runs: Sequence[Sequence[tuple[float, bool | None]]]) -> str:
    """One table row from, per run, the (gap, planted) of one or more decisions (their mean counts)."""

    def count(which: bool | str | None) -> str:
        chosen = [[g for g, p in run if which == "all" or p is which] for run in runs]
        chosen = [c for c in chosen if c]
        if not chosen:
            return "-"
        within = sum(statistics.fmean(g <= 2.0 for g in c) for c in chosen)
        return f"{within:.1f} of {len(chosen)}" if any(len(c) > 1 for c in chosen) else f"{within:.0f} of {len(chosen)}"

    gaps = [statistics.fmean(g for g, _ in run) for run in runs]
    return f"| {label} | {count('all')} | {count(True)} | {count(False)} | {statistics.fmean(gaps):.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", type=Path, help="a finished dmtg suite folder (suite.json, references.json)")
    parser.add_argument("--strategy", default="dmtg", help="whose runs to replay (its label in suite.json)")
    parser.add_argument("--stage", default="warm_start", help="the stage whose grouping the rule starts from")
    args = parser.parse_args()
    records = [r for r in json.loads((args.suite / "suite.json").read_text()) if r["strategy"] == args.strategy]
    raw = json.loads((args.suite / "references.json").read_text())
    references = {key: {int(m): v for m, v in nets.items()} for key, nets in raw.items()}
    result = replay(records, references, args.stage)
    if not result["stage"]:
        raise SystemExit(f"no exhaustive run of {args.strategy!r} with a {args.stage!r} stage in {args.suite}")
    print(f"`{args.strategy}` runs in {args.suite}, from the grouping after `{args.stage}`:\n")
    print("| grouping | within 2% of optimum | where planted is optimum | where it is not | mean gap % |")
    print("|---|---|---|---|---|")
    print(_row(f"after {args.stage}", [[x] for x in result["stage"]]))
    print(_row("merged by the all-task network (mean reference)", [[x] for x in result["mean"]]))
    print(_row("merged by the all-task network (one training)", result["one training"]))


if __name__ == "__main__":
    main()
