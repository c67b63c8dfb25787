"""Score a strategy on planted data over several seeds against the planted partition and K=1.

For each seed (data and strategy), it runs one search and trains, from scratch and with the same
epoch budget, the planted partition and all tasks in one network (K=1). It reports the adjusted Rand
index between found and planted groups and the three test total losses, as a markdown table.

    python benchmarks/planted_seeds.py --seeds 5 --strategy dmtg --out runs/bench-planted
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch

import dmtg_nas
from dmtg_nas.components import load_data
from dmtg_nas.engine.train import train_partition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="planted")
    parser.add_argument("--strategy", default="dmtg")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-planted"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    rows = []
    for seed in range(args.seeds):
        overrides = [f"strategy={args.strategy}", *args.overrides, f"dataset.seed={seed}", f"strategy.seed={seed}"]
        spec = dmtg_nas.load_spec(args.spec, overrides)
        data = load_data(spec)
        assert data.ground_truth is not None
        t0 = time.perf_counter()
        found = dmtg_nas.search(spec, None, progress=False, data=data)
        seconds = time.perf_counter() - t0
        _, planted = train_partition(spec, data, data.ground_truth)
        _, single = train_partition(spec, data, [spec.task_names])
        row = {
            "seed": seed,
            "found": found.groups,
            "ari": found.metrics["ground_truth"]["adjusted_rand_index"],
            "found_loss": found.metrics["totals"]["test"]["total_loss"],
            "planted_loss": planted["totals"]["test"]["total_loss"],
            "k1_loss": single["totals"]["test"]["total_loss"],
            "search_seconds": seconds,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    lines = [
        f"strategy `{args.strategy}` on `{args.spec}` {' '.join(args.overrides)}",
        "",
        "| seed | ARI | found loss | planted loss | K=1 loss | found groups |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        groups = " / ".join(",".join(g) for g in r["found"])
        losses = f"{r['found_loss']:.3f} | {r['planted_loss']:.3f} | {r['k1_loss']:.3f}"
        lines.append(f"| {r['seed']} | {r['ari']:.2f} | {losses} | {groups} |")
    med = {k: statistics.median(r[k] for r in rows) for k in ("ari", "found_loss", "planted_loss", "k1_loss")}
    lines.append(
        f"| median | {med['ari']:.2f} | {med['found_loss']:.3f} | {med['planted_loss']:.3f} | {med['k1_loss']:.3f} | |"
    )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
