"""What the default pipeline costs, stage by stage, against K trainings of one all-task network.

For every problem and K, a fresh Python process (one torch thread) runs the default ``dmtg``
strategy end to end into a temporary folder and the benchmark reads each stage's seconds from its
``metrics.json`` (``search.warm_start_seconds``, ``search_seconds`` (the supernet),
``finetune_seconds``, ``check_seconds``, ``total_seconds``; the total also holds loading the data,
building the networks and writing the outputs) and the process's peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). In the same rounds, another fresh process trains ONE
all-task network (K = 1: every task on one encoder, ``train_partition`` with all tasks in one group:
the search's epochs plus the fine-tune's, same data, batch, optimizer and seed) and times that
training. Rounds interleave the measurements (all-task network, K1, K2, ... per problem); the
report gives medians over rounds and ``ratio`` = the median over rounds of
``total / (K x all-task training)`` of the same round. ``--strategy`` (repeatable) measures other
strategies (presets or YAML files) in the same rounds, side by side with the same all-task network.

Problems (``--problems``):

- ``planted9``: the shipped ``planted`` space (9 regression tasks in planted groups of 2, 3, 4;
  ``mlp`` 32-8; K = 3 by default).
- ``planted40``: the same generator with 40 tasks ``t1``..``t40`` in planted groups of 10, 10, 10, 10
  (K = 2, 4, 8 by default).
- ``digits9``: real images, no download: the shipped ``digits`` space (scikit-learn's 1,797
  handwritten digits at 16x16, 9 binary attributes, the batch-norm ``convnet`` encoder, so no merge
  check; the default budget); K = 3 by default. ``--samples-scale`` does not apply.
- ``image40``: CelebA-shaped: 40 binary tasks (planted groups of 10) on generated images (the
  planted generator's ``image_size`` option: one channel, ``--image-size`` 16 by default) with the
  ``celeba_resnet`` encoder at width 8 (CelebA's is 64 at 3x64x64), at the budget of the shipped
  ``celeba40`` space (warm start 2 epochs, supernet 10, fine-tune 5; batch norm, so no merge
  check); K = 2, 4, 8 by default.

``--epochs-scale`` multiplies every epoch budget (warm start epochs and minimum steps, supernet,
fine-tune; at least 1 each) and ``--samples-scale`` the generated samples, to fit a time budget.

    python benchmarks/one_shot_cost.py --rounds 3 --out runs/one_shot_cost.json
    python benchmarks/one_shot_cost.py --problems planted40 --branches 4,8 --rounds 2
    python benchmarks/one_shot_cost.py --problems image40 --epochs-scale 0.5 --samples-scale 0.5
    python benchmarks/one_shot_cost.py --problems planted9 --strategy dmtg \\
        --strategy benchmarks/strategies/align-check.yaml

stdout: the table; stderr: progress. ``--index`` also times the CelebA loader's index build
(``read_celeba_index``) on generated ``list_attr_celeba.txt`` / ``list_eval_partition.txt`` files of
CelebA's 202,599 entries in the release's format (no images: the index does not open them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dmtg_nas.data.celeba import CELEBA_IMAGES

PROBLEMS = ("planted9", "planted40", "image40", "digits9")
DEFAULT_BRANCHES = {"planted9": [3], "planted40": [2, 4, 8], "image40": [2, 4, 8], "digits9": [3]}
STAGES = ("warm_start", "supernet", "finetune", "check")
METRIC_KEYS = {
    "warm_start": "warm_start_seconds",
    "supernet": "search_seconds",
    "finetune": "finetune_seconds",
    "check": "check_seconds",
    "total": "total_seconds",
}
IMAGE_SIZE = 16


def _scaled(value: int, factor: float) -> int:
    return max(1, round(value * factor))


def problem_doc(
    problem: str,
    k: int,
    epochs_scale: float = 1.0,
    samples_scale: float = 1.0,
    image_size: int = IMAGE_SIZE,
    strategy: str = "dmtg",
) -> dict[str, Any]:
    """The spec (a mapping for ``load_spec``) of a problem at K branches with ``strategy`` (a preset
    name or a YAML path) in place of the default, its budgets scaled."""
    from dmtg_nas.config import load_spec

    strategy = _strategy_ref(strategy)
    shipped = {"planted9": "planted", "digits9": "digits"}  # problems that are shipped spaces
    if problem in shipped:
        doc = load_spec(shipped[problem], [f"strategy={strategy}"]).to_dict()
    elif problem in ("planted40", "image40"):
        image = problem == "image40"
        task_type = "binary" if image else "regression"
        dataset: dict[str, Any] = {
            "name": "planted",
            "group_sizes": [10, 10, 10, 10],
            "input_dim": image_size**2 if image else 32,
            "latent_dim": 8,
            "noise": 0.1,
            "samples": 2000 if image else 4000,
            "seed": 0,
            "split": {"val": 0.2, "test": 0.2, "seed": 0},
        }
        if image:
            dataset["image_size"] = image_size
        doc = {
            "name": problem,
            "tasks": [{"name": f"t{i}", "type": task_type} for i in range(1, 41)],
            "dataset": dataset,
            "backbone": {"name": "celeba_resnet", "width": 8} if image else {"name": "mlp", "hidden": [32, 8]},
            "heads": {"hidden": []},
            "branches": k,
            # celeba40's budget: warm start 2 epochs, supernet 10, fine-tune 5
            "strategy": {"_base_": strategy, "warmup": {"epochs": 2}, "epochs": 10, "finetune": {"epochs": 5}}
            if image
            else strategy,
        }
        doc = load_spec(doc).to_dict()
    else:
        raise ValueError(f"unknown problem {problem!r}; choose from {', '.join(PROBLEMS)}")
    doc["branches"] = k
    strat = doc["strategy"]
    strat["epochs"] = _scaled(strat["epochs"], epochs_scale)
    strat["finetune"]["epochs"] = _scaled(strat["finetune"]["epochs"], epochs_scale)
    strat["warmup"]["epochs"] = _scaled(strat["warmup"]["epochs"], epochs_scale)
    strat["warmup"]["min_steps"] = _scaled(strat["warmup"]["min_steps"], epochs_scale)
    strat["trainer"] = {**strat.get("trainer", {}), "accelerator": "cpu"}
    if "samples" in doc["dataset"]:  # generated data (digits9's are the real set's)
        doc["dataset"]["samples"] = _scaled(doc["dataset"]["samples"], samples_scale)
    return doc


def _strategy_ref(strategy: str) -> str:
    """A preset name as it is; a YAML path made absolute (the measurements run from the repository root)."""
    return str(Path(strategy).resolve()) if strategy.endswith((".yaml", ".yml")) else strategy


def strategy_label(strategy: str) -> str:
    """A strategy's name in the rounds and the table: the preset name or the file's stem."""
    return Path(strategy).stem if strategy.endswith((".yaml", ".yml")) else strategy


def measure(
    kind: str,
    problem: str,
    k: int,
    epochs_scale: float,
    samples_scale: float,
    image_size: int = IMAGE_SIZE,
    strategy: str = "dmtg",
) -> dict[str, Any]:
    """One measurement in this process (one torch thread): ``search`` (``strategy`` end to end, stage
    seconds from metrics.json) or ``all_tasks`` (one all-task network trained)."""
    import logging
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    from dmtg_nas.components import load_data
    from dmtg_nas.config import load_spec
    from dmtg_nas.engine.train import train_partition
    from dmtg_nas.pipeline.run import run_search

    spec = load_spec(problem_doc(problem, k, epochs_scale, samples_scale, image_size, strategy))
    out: dict[str, Any] = {}
    if kind == "search":
        with tempfile.TemporaryDirectory() as tmp:
            run_search(spec, Path(tmp) / "run", progress=False)
            metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
        out = {stage: float(metrics["search"][key]) for stage, key in METRIC_KEYS.items()}
        out["branches_used"] = int(metrics["search"]["branches_used"])
    elif kind == "all_tasks":
        data = load_data(spec)
        t0 = time.perf_counter()
        train_partition(spec, data, [spec.task_names])
        out = {"seconds": time.perf_counter() - t0, "epochs": spec.strategy.epochs + spec.strategy.finetune.epochs}
    else:
        raise ValueError(kind)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return out


def run_fresh(
    kind: str,
    problem: str,
    k: int,
    epochs_scale: float,
    samples_scale: float,
    image_size: int = IMAGE_SIZE,
    strategy: str = "dmtg",
) -> dict[str, Any]:
    """``measure`` in a fresh Python process (this checkout first on the path, one thread)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import one_shot_cost as b;"
        " print('RESULT', json.dumps(b.measure(sys.argv[2], sys.argv[3], int(sys.argv[4]),"
        " float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), sys.argv[8])))"
    )
    argv = [str(Path(__file__).parent), kind, problem, str(k), repr(epochs_scale), repr(samples_scale), str(image_size)]
    argv.append(_strategy_ref(strategy))
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{kind} {problem} K={k}: the measurement failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def summarize(problem: str, k: int, rounds: list[dict[str, Any]], strategy: str = "dmtg") -> dict[str, Any]:
    """The medians over rounds of one (problem, K, strategy), and the ratio (median of per-round ratios)."""
    runs = [r[strategy][str(k)] for r in rounds]
    single = [r["all_tasks"]["seconds"] for r in rounds]
    row: dict[str, Any] = {"problem": problem, "k": k, "strategy": strategy, "rounds": len(rounds)}
    for stage in (*STAGES, "total"):
        row[f"{stage}_s"] = statistics.median(r[stage] for r in runs)
    row["all_tasks_s"] = statistics.median(single)
    row["ratio"] = statistics.median(r["total"] / (k * s) for r, s in zip(runs, single))
    row["ratio_of_medians"] = row["total_s"] / (k * row["all_tasks_s"])
    row["dominant_stage"] = max(STAGES, key=lambda s: row[f"{s}_s"])
    row["dominant_share"] = row[f"{row['dominant_stage']}_s"] / row["total_s"]
    row["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in runs)
    row["all_tasks_peak_rss_mb"] = statistics.median(r["all_tasks"]["peak_rss_mb"] for r in rounds)
    return row


def report(rows: list[dict[str, Any]], tasks: dict[str, int]) -> str:
    """The table; a strategy column when the rows hold more than one strategy."""
    several = len({r.get("strategy", "dmtg") for r in rows}) > 1
    head = [
        *(["strategy"] if several else []),
        "problem",
        "N",
        "K",
        "warm start s",
        "supernet s",
        "fine-tune s",
        "check s",
        "total s",
        "all-task network s",
        "total / (K x all-task)",
        "largest stage",
        "peak RSS MB",
        "all-task peak RSS MB",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [*([r["strategy"]] if several else []), r["problem"], str(tasks[r["problem"]]), str(r["k"])]
        cells += [f"{r[f'{s}_s']:.2f}" for s in (*STAGES, "total")]
        cells += [f"{r['all_tasks_s']:.2f}", f"{r['ratio']:.2f}"]
        cells += [f"{r['dominant_stage'].replace('_', ' ')} ({r['dominant_share']:.0%})"]
        cells += [f"{r['peak_rss_mb']:.0f}", f"{r['all_tasks_peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_celeba_index(root: Path, n: int = CELEBA_IMAGES, seed: int = 0) -> Path:
    """``list_attr_celeba.txt`` and ``list_eval_partition.txt`` of ``n`` images in the release's
    format (count line, attribute names, ``000001.jpg  1 -1 ...`` with two-space padded values;
    partition 0/1/2 at CelebA's cut points scaled to ``n``), and an empty ``img_align_celeba``."""
    import numpy as np

    from dmtg_nas.data.celeba import CELEBA_ATTRIBUTES

    rng = np.random.default_rng(seed)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    labels = rng.choice(np.array([" 1", "-1"]), size=(n, len(CELEBA_ATTRIBUTES)))
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    with (root / "list_attr_celeba.txt").open("w") as handle:
        handle.write(f"{n}\n{' '.join(CELEBA_ATTRIBUTES)} \n")
        for name, row in zip(names, labels):
            handle.write(f"{name} {' '.join(row)}\n")
    cuts = [round(162_770 * n / CELEBA_IMAGES), round(182_637 * n / CELEBA_IMAGES)]  # the release's splits
    with (root / "list_eval_partition.txt").open("w") as handle:
        for i, name in enumerate(names):
            handle.write(f"{name} {0 if i < cuts[0] else 1 if i < cuts[1] else 2}\n")
    return root


def time_index(n: int, rounds: int) -> dict[str, Any]:
    """Seconds of ``read_celeba_index`` over all 40 attributes on a generated index of ``n`` entries
    (one fresh process per round would re-measure imports only; the parse is timed in this one)."""
    from dmtg_nas.data.celeba import CELEBA_ATTRIBUTES, read_celeba_index

    with tempfile.TemporaryDirectory() as tmp:
        root = write_celeba_index(Path(tmp), n)
        seconds = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            files, labels, partition = read_celeba_index(root, CELEBA_ATTRIBUTES)
            seconds.append(time.perf_counter() - t0)
        assert len(files) == n and labels.shape == (n, 40) and len(partition) == n
    return {"entries": n, "seconds": seconds, "median_s": statistics.median(seconds)}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS), help=f"comma list of {','.join(PROBLEMS)}")
    parser.add_argument("--branches", default=None, help="K values for every problem (comma list; default per problem)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies every epoch budget (default: 1)")
    parser.add_argument("--samples-scale", type=float, default=1.0, help="multiplies the generated samples")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="image40's image side (default: 16)")
    parser.add_argument("--index", action="store_true", help="also time the CelebA index build (202,599 entries)")
    parser.add_argument("--index-entries", type=int, default=CELEBA_IMAGES, help=argparse.SUPPRESS)
    parser.add_argument(
        "--strategy",
        action="append",
        default=None,
        help="a strategy preset or YAML file to measure (repeatable: side by side in every round; default: dmtg)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write rounds and summary here (JSON)")
    args = parser.parse_args(argv)
    strategies = args.strategy or ["dmtg"]
    labels = [strategy_label(s) for s in strategies]
    if len(set(labels)) < len(labels):
        parser.error(f"--strategy names one strategy twice: {', '.join(labels)}")
    for strategy in strategies:
        try:
            problem_doc(PROBLEMS[0], 1, strategy=strategy)
        except Exception as exc:  # a bad preset name or file fails here, before any measurement
            parser.error(f"--strategy {strategy}: {exc}")
    problems = [p for p in args.problems.split(",") if p]
    if not problems or sorted(set(problems) - set(PROBLEMS)):
        parser.error(f"--problems takes {', '.join(PROBLEMS)}; got {args.problems!r}")
    try:
        chosen = _ints(args.branches) if args.branches else None
    except ValueError:
        parser.error(f"--branches takes a comma list of integers; got {args.branches!r}")
    if chosen is not None and (not chosen or min(chosen) < 1):
        parser.error("--branches takes K >= 1")
    if args.rounds < 1 or args.epochs_scale <= 0 or args.samples_scale <= 0 or args.image_size < 8:
        parser.error("--rounds must be >= 1, the scales > 0 and --image-size >= 8")
    branches = {p: chosen or DEFAULT_BRANCHES[p] for p in problems}
    tasks = {p: len(problem_doc(p, 1)["tasks"]) for p in problems}
    rounds: dict[str, list[dict[str, Any]]] = {p: [] for p in problems}
    scale = (args.epochs_scale, args.samples_scale, args.image_size)
    t_start = time.perf_counter()
    for i in range(args.rounds):
        for p in problems:
            entry: dict[str, Any] = {"all_tasks": run_fresh("all_tasks", p, 1, *scale), **{s: {} for s in labels}}
            print(f"round {i + 1}/{args.rounds} {p} all-task network: {entry['all_tasks']}", file=sys.stderr)
            for k in branches[p]:
                for strategy, label in zip(strategies, labels):
                    entry[label][str(k)] = run_fresh("search", p, k, *scale, strategy=strategy)
                    print(f"round {i + 1}/{args.rounds} {p} K={k} {label}: {entry[label][str(k)]}", file=sys.stderr)
            rounds[p].append(entry)
    rows = [summarize(p, k, rounds[p], label) for p in problems for k in branches[p] for label in labels]
    doc: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/one_shot_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch_threads": 1,
        },
        "epochs_scale": args.epochs_scale,
        "samples_scale": args.samples_scale,
        "image_size": args.image_size,
        "tasks": {p: tasks[p] for p in problems},
        "branches": branches,
        "strategies": dict(zip(labels, strategies)),
        "rounds": rounds,
        "rows": rows,
        "seconds": time.perf_counter() - t_start,
    }
    try:
        import torch

        doc["machine"]["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    table = report(rows, tasks)
    if args.index:
        doc["celeba_index"] = time_index(args.index_entries, 3)
        table += (
            f"\n\nCelebA index build (`read_celeba_index`, 40 attributes): {doc['celeba_index']['entries']:,} entries"
            f" in {doc['celeba_index']['median_s']:.2f} s (median of 3)"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1))
    print(table)
    return doc


if __name__ == "__main__":
    main()
