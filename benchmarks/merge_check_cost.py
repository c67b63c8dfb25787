"""What the merge check costs: whole-search wall time with and without it, side by side.

For every suite shape and seed given, the same search (same data, same seed) runs with the preset
(``--strategy``), with the preset's check turned off, and with each ``--setting``, interleaved
(A, B, C, A, B, C, ... over the repeats); each run's total time, the check's own time
(``metrics["local_search"]["seconds"]``) and its group networks are recorded. It reports, per
setting, the median total and check seconds, and the medians over runs of the total-time ratio to
the preset and to the search without the check.

    python benchmarks/merge_check_cost.py --shapes noisy-k3,mixed-k3,pairs-k3 --seeds 2 --repeats 3 \\
        --setting merges strategy.local_search.moves=false strategy.local_search.merge_splits=false \\
        strategy.local_search.replicates=1
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import torch

from dmtg_nas import run_search
from dmtg_nas.components import load_data
from dmtg_nas.suite import SHAPES, parse_seeds, shape_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default="dmtg")
    parser.add_argument("--shapes", default="noisy-k3,mixed-k3,pairs-k3", help="suite shapes (comma list)")
    parser.add_argument("--seeds", default="2", help="count (2: seeds 0, 1), range or list (as `dmtg suite --seeds`)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per run (median)")
    parser.add_argument(
        "--setting",
        nargs="+",
        action="append",
        default=[],
        metavar="LABEL KEY=VALUE",
        help="a label and its --set overrides (repeatable)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("runs/merge_check_cost.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in ("pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if any(len(s) < 2 for s in args.setting):
        parser.error("--setting takes a label and at least one KEY=VALUE override")
    settings = [("preset", []), ("no check", ["strategy.local_search.enabled=false"])]
    settings += [(s[0], s[1:]) for s in args.setting]
    rows: list[dict[str, Any]] = []
    for shape_name in args.shapes.split(","):
        for seed in parse_seeds(args.seeds):
            specs = [(label, shape_spec(SHAPES[shape_name], args.strategy, seed, o)) for label, o in settings]
            data = load_data(specs[0][1])
            times: dict[str, list[tuple[float, float, int]]] = {label: [] for label, _ in specs}
            for _ in range(args.repeats):
                for label, spec in specs:
                    m = run_search(spec, None, progress=False, data=data).metrics
                    ls = m.get("local_search", {})
                    times[label].append(
                        (m["search"]["total_seconds"], ls.get("seconds", 0.0), ls.get("networks_trained", 0))
                    )
            row = {
                "shape": shape_name,
                "seed": seed,
                **{
                    label: {
                        "total_seconds": statistics.median(t for t, _, _ in v),
                        "check_seconds": statistics.median(c for _, c, _ in v),
                        "networks": v[0][2],
                    }
                    for label, v in times.items()
                },
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    lines = [
        f"Merge check cost, {len(rows)} runs x {args.repeats} interleaved repeats, {args.threads} thread(s):",
        "",
        "| setting | total s (median) | check s (median) | group networks (median) "
        "| total / preset (median) | total / no check (median) |",
        "|---|---|---|---|---|---|",
    ]
    for label, _ in settings:
        lines.append(
            f"| {label} | {statistics.median(r[label]['total_seconds'] for r in rows):.1f} "
            f"| {statistics.median(r[label]['check_seconds'] for r in rows):.1f} "
            f"| {statistics.median(r[label]['networks'] for r in rows):g} "
            f"| {statistics.median(r[label]['total_seconds'] / r['preset']['total_seconds'] for r in rows):.2f} "
            f"| {statistics.median(r[label]['total_seconds'] / r['no check']['total_seconds'] for r in rows):.2f} |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
