"""Wall times of the package's trainings, side by side across checkouts (before/after a change).

For each round and each checkout in turn, a fresh Python process with that checkout first on its
path times, on a shipped search space (default ``planted6``): ``train_partition`` of the planted
partition (all tasks together where the data has none; one grouped network, the search's epoch
budget), the one-shot search alone (no warm start, no fine-tune, no merge check), the warm start
alone, the ``tag`` baseline, the ``dmtg`` method (the default strategy end to end) and the ``dmtg``
method with the ``dmtg-fast`` preset, each once. Rounds alternate the
checkouts (A, B, A, B, ...); the report gives each checkout's median per measurement and, with
several checkouts, the first one's median over each other's.

    python benchmarks/wall_times.py                                    # this checkout, 3 rounds
    git worktree add /tmp/before HEAD~3
    python benchmarks/wall_times.py --checkout /tmp/before --checkout . --rounds 3 --out runs/wall.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MEASURES = ("train_partition", "oneshot_search", "warm_start", "tag", "dmtg", "dmtg_fast")


def measure(spec_name: str, only: list[str]) -> dict[str, float]:
    """The timings of one round in this process (one torch thread)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from dmtg_nas.baselines import run_method
    from dmtg_nas.components import load_data
    from dmtg_nas.config import load_spec
    from dmtg_nas.engine.train import train_partition
    from dmtg_nas.pipeline.run import run_search
    from dmtg_nas.warmstart import attribution_warm_start

    spec = load_spec(spec_name)
    data = load_data(spec)
    groups = data.ground_truth or [spec.task_names]  # the planted partition, else all tasks together
    oneshot = load_spec(
        spec_name,
        ["strategy.local_search.enabled=false", "strategy.warmup.method=none", "strategy.finetune.epochs=0"],
    )
    runs = {
        "train_partition": lambda: train_partition(spec, data, groups),
        "oneshot_search": lambda: run_search(oneshot, None, progress=False, data=data),
        "warm_start": lambda: attribution_warm_start(spec, data),
        "tag": lambda: run_method("tag", spec, data),
        "dmtg": lambda: run_method("dmtg", spec, data),
        "dmtg_fast": lambda: run_method("dmtg", load_spec(spec_name, ["strategy=dmtg-fast"]), data),
    }
    out = {}
    for name in only:
        t0 = time.perf_counter()
        runs[name]()
        out[name] = time.perf_counter() - t0
    return out


def run_round(checkout: Path, spec_name: str, only: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import wall_times;"
        " print('RESULT', json.dumps(wall_times.measure(sys.argv[2], sys.argv[3].split(','))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), spec_name, ",".join(only)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{checkout}: the measurement failed:\n{done.stderr[-2000:]}")
    return {k: float(v) for k, v in json.loads(lines[-1][len("RESULT ") :]).items()}


def report(checkouts: list[str], rounds: list[dict[str, dict[str, float]]], only: list[str]) -> str:
    medians = {c: {m: statistics.median(r[c][m] for r in rounds) for m in only} for c in checkouts}
    head = ["measure", *(f"{c} s" for c in checkouts)]
    head += [f"{checkouts[0]} / {c}" for c in checkouts[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in only:
        row = [m, *(f"{medians[c][m]:.2f}" for c in checkouts)]
        row += [f"{medians[checkouts[0]][m] / medians[c][m]:.2f}" for c in checkouts[1:]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", default=[], help="a source checkout (repeatable; default: .)")
    parser.add_argument("--spec", default="planted6", help="shipped search space (default: planted6)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each checkout once per round (default: 3)")
    parser.add_argument("--only", default=",".join(MEASURES), help=f"comma-separated subset of {','.join(MEASURES)}")
    parser.add_argument("--out", type=Path, default=None, help="write every round's timings here (JSON)")
    args = parser.parse_args(argv)
    only = [m for m in args.only.split(",") if m]
    unknown = sorted(set(only) - set(MEASURES))
    if unknown or not only:
        parser.error(f"--only takes {', '.join(MEASURES)}; got {args.only!r}")
    checkouts = args.checkout or ["."]
    for c in checkouts:
        if not (Path(c) / "dmtg_nas" / "__init__.py").is_file():
            parser.error(f"{c} is not a dmtg-nas checkout (no dmtg_nas/__init__.py)")
    rounds = []
    for i in range(args.rounds):
        rounds.append({c: run_round(Path(c).resolve(), args.spec, only) for c in checkouts})
        print(f"round {i + 1}/{args.rounds}: " + json.dumps(rounds[-1]), file=sys.stderr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"spec": args.spec, "checkouts": checkouts, "rounds": rounds}, indent=1))
    print(report(checkouts, rounds, only))


if __name__ == "__main__":
    main()
