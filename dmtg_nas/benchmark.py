"""Side-by-side benchmark of grouping methods: same data, splits, encoder and epoch budget.

``run_benchmark(spec, methods, seeds, out_dir)`` runs every (method, seed) pair, appending each
result to ``results.json`` as it finishes (a rerun with ``resume=True`` skips finished pairs), then
writes ``results.md`` (per-method means and spreads; no spread for a single run), ``results.csv``
(one row per run: validation and test losses, and the adjusted Rand index against the planted
partition where the data set knows it) and ``results.png``. Seeds change the training seed
(weights, batch order, Gumbel noise, random groups); the data and its splits stay fixed.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .baselines import METHODS, delta_m, run_method
from .components import load_data
from .config import SearchSpec
from .errors import DmtgError, SpecError
from .pipeline.outputs import adjusted_rand_index
from .progress import Progress

__all__ = ["DEFAULT_METHODS", "preload_method_imports", "run_benchmark", "summarize_runs", "write_report"]

_logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("dmtg", "tag", "hoa", "naive", "stl", "random")
HOA_MAX_TASKS = 10  # 2^N - 1 networks: beyond this the exhaustive variants are refused


def _check_methods(methods: Sequence[str], n_tasks: int) -> list[str]:
    out = []
    for name in methods:
        try:
            METHODS.lookup(name)
        except SpecError as exc:
            raise SpecError(exc.message, source="--methods") from None
        if name in ("hoa", "hoa-cover") and n_tasks > HOA_MAX_TASKS:
            raise SpecError(
                f"{name} trains 2^{n_tasks} - 1 networks; use it for at most {HOA_MAX_TASKS} tasks (or 'hoa-pairs')",
                source="--methods",
            )
        out.append(name)
    return out


# what the methods import on first use (NNI's one-shot search and its trial channel, the warm
# start's clustering, the merge check, the search's logger and scores)
_LAZY_IMPORTS = (
    "nni.nas.evaluator.pytorch",
    "nni.nas.execution",
    "nni.nas.space",
    "nni.runtime.trial_command_channel.standalone",
    "pytorch_lightning.loggers",
    "sklearn.cluster",
    "sklearn.metrics",
    "dmtg_nas.localsearch",
    "dmtg_nas.strategy",
    "dmtg_nas.warmstart",
)


def preload_method_imports() -> None:
    """Import the modules the methods load on first use, so that the first timed run of a process
    does not pay the process's one-time imports (about 0.6 s for a first DMTG search, measured
    against its repeats in one process; TAG and the trainings of the other methods import nothing
    new)."""
    import importlib

    for name in _LAZY_IMPORTS:
        importlib.import_module(name)


def run_benchmark(
    spec: SearchSpec,
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: int | Sequence[int] = 3,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    affinity_every: int = 1,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Run the methods over the seeds; returns one record per (method, seed), in the order run: seed
    by seed, with the methods' order rotated by one at each seed."""
    methods = _check_methods(methods, len(spec.tasks))
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    out = Path(out_dir) if out_dir is not None else None
    records: list[dict[str, Any]] = []
    if out is not None:
        results = out / "results.json"
        if resume and results.is_file():
            records = json.loads(results.read_text())
        elif out.exists() and any(out.iterdir()) and not overwrite and not resume:
            raise DmtgError(f"{out} already exists and is not empty; resume it, choose another folder or overwrite")
        out.mkdir(parents=True, exist_ok=True)
    done = {(r["method"], r["seed"]) for r in records}
    data = load_data(spec)
    preload_method_imports()
    # seed by seed, the methods in turn; the order rotates with each seed, so that no method always
    # runs first (the first run of a process may pay other one-time costs: caches, allocations)
    todo = [
        (m, s)
        for i, s in enumerate(seed_list)
        for m in methods[i % len(methods) :] + methods[: i % len(methods)]
        if (m, s) not in done
    ]
    for n, (method, seed) in enumerate(todo):
        if progress is not None:
            progress("benchmark", n, len(todo), f"{method} seed {seed}")
        seeded = spec.model_copy(update={"strategy": spec.strategy.model_copy(update={"seed": seed})})
        result = run_method(method, seeded, data, seed=seed, affinity_every=affinity_every)
        record = {"seed": seed, **asdict(result)}
        records.append(record)
        if out is not None:
            (out / "results.json").write_text(json.dumps(records, indent=1))
    if progress is not None:
        progress("benchmark", len(todo), len(todo))
    if out is not None:
        write_report(records, spec, out, data.ground_truth)
    return records


Stat = tuple[float, float | None]  # mean and standard deviation (None: a single value, no spread)


def _stats(values: Sequence[float]) -> Stat:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _ari(record: dict[str, Any], ground_truth: Sequence[Sequence[str]] | None) -> float | None:
    """The run's adjusted Rand index against the planted partition (None: none known, or HOA's
    overlapping groups, which are no partition)."""
    if ground_truth is None or record["rule"] != "partition":
        return None
    return adjusted_rand_index(record["groups"], ground_truth)


def summarize_runs(
    records: Sequence[dict[str, Any]], spec: SearchSpec, ground_truth: Sequence[Sequence[str]] | None = None
) -> list[dict[str, Any]]:
    """Per-method aggregates: mean and spread of test total loss/error, Delta_m % vs STL (same
    seed), trainings, decision time and time to the final model, the most frequent groups; with the
    data set's planted partition (``ground_truth``), the adjusted Rand index of the groups
    (``adjusted_rand_index``, None for overlapping groups)."""
    stl = {r["seed"]: r["metrics"]["test"] for r in records if r["method"] == "stl"}
    methods = list(dict.fromkeys(r["method"] for r in records))
    rows = []
    for method in methods:
        runs = [r for r in records if r["method"] == method]
        loss = [r["metrics"]["totals"]["test"]["total_loss"] for r in runs]
        errors = [r["metrics"]["totals"]["test"].get("total_error") for r in runs]
        dm = [delta_m(r["metrics"]["test"], stl[r["seed"]], spec.tasks) for r in runs if r["seed"] in stl]
        groups = Counter(json.dumps(sorted(sorted(g) for g in r["groups"])) for r in runs).most_common(1)[0]
        row: dict[str, Any] = {
            "method": method,
            "rule": runs[0]["rule"],
            "runs": len(runs),
            "test_total_loss": _stats(loss),
            "delta_m_vs_stl": _stats(dm) if dm else None,
            "trainings": statistics.fmean(r["trainings"] for r in runs),
            "decision_seconds": _stats([r["decision_seconds"] for r in runs]),
            "total_seconds": _stats([r["total_seconds"] for r in runs]),
            "groups": json.loads(groups[0]),
            "groups_frequency": groups[1] / len(runs),
        }
        if all(e is not None for e in errors):
            row["test_total_error"] = _stats([float(e) for e in errors if e is not None])
        if ground_truth is not None:
            aris = [_ari(r, ground_truth) for r in runs]
            row["adjusted_rand_index"] = _stats([a for a in aris if a is not None]) if None not in aris else None
        rows.append(row)
    return rows


def _fmt(stat: Stat | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    mean, spread = stat
    return f"{mean:.{digits}f}" if spread is None else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def write_report(
    records: Sequence[dict[str, Any]],
    spec: SearchSpec,
    out: Path,
    ground_truth: Sequence[Sequence[str]] | None = None,
) -> None:
    """``results.md``, ``results.csv`` and ``results.png`` from the run records; with the data set's
    planted partition (``ground_truth``), an adjusted Rand index column in both tables."""
    rows = summarize_runs(records, spec, ground_truth)
    ref = next((r for r in rows if r["method"] == "dmtg"), None)
    has_error = all("test_total_error" in r for r in rows)
    header = ["method", "rule", "runs", "test total loss"]
    header += ["test total error %"] if has_error else []
    header += ["ARI vs planted"] if ground_truth is not None else []
    header += ["Δm % vs STL", "trainings", "decision s", "to final model s", "time / dmtg", "groups (most frequent)"]
    lines = [
        f"# Benchmark: {spec.name} (N={len(spec.tasks)}, K={spec.groups}, {spec.backbone.name}, "
        f"{spec.strategy.epochs + spec.strategy.finetune.epochs} epochs per network)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        ratio = r["total_seconds"][0] / ref["total_seconds"][0] if ref else float("nan")
        cells = [r["method"], r["rule"], str(r["runs"]), _fmt(r["test_total_loss"])]
        cells += [_fmt(r["test_total_error"], 2)] if has_error else []
        cells += [_fmt(r["adjusted_rand_index"])] if ground_truth is not None else []
        cells += [
            _fmt(r["delta_m_vs_stl"], 2),
            f"{r['trainings']:g}",
            _fmt(r["decision_seconds"], 1),
            _fmt(r["total_seconds"], 1),
            f"{ratio:.2f}",
            " / ".join(", ".join(g) for g in r["groups"]) + f" ({r['groups_frequency']:.0%})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    spread = "Means ± standard deviations over seeds" if any(r["runs"] > 1 for r in rows) else "One seed: no spread"
    lines += ["", f"{spread}. Δm: positive = better than single-task learning."]
    if ground_truth is not None:
        lines[-1] += " ARI: adjusted Rand index of the groups against the planted partition (1 = identical)."
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")

    with (out / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        tasks = spec.task_names
        ari = ["adjusted_rand_index"] if ground_truth is not None else []
        writer.writerow(
            ["method", "seed", "rule", "groups", "trainings", "decision_seconds", "total_seconds",
             "val_total_loss", "test_total_loss", *ari]
            + [f"test_loss_{t}" for t in tasks]
        )  # fmt: skip
        for r in records:
            totals = r["metrics"]["totals"]
            score = _ari(r, ground_truth)
            writer.writerow(
                [r["method"], r["seed"], r["rule"], json.dumps(r["groups"]), r["trainings"],
                 round(r["decision_seconds"], 3), round(r["total_seconds"], 3),
                 totals["val"]["total_loss"], totals["test"]["total_loss"]]
                + ([] if ground_truth is None else ["" if score is None else round(score, 4)])
                + [r["metrics"]["test"][t]["loss"] for t in tasks]
            )  # fmt: skip
    _plot(rows, out / "results.png")


def _plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r["method"] for r in rows]
    loss = [r["test_total_loss"] for r in rows]
    ax1.bar(names, [m for m, _ in loss], yerr=[s or 0.0 for _, s in loss], color="tab:blue", capsize=3)
    ax1.set_ylabel("test total loss (lower is better)")
    secs = [r["total_seconds"] for r in rows]
    ax2.bar(names, [m for m, _ in secs], yerr=[s or 0.0 for _, s in secs], color="tab:orange", capsize=3)
    ax2.set_yscale("log")
    ax2.set_ylabel("seconds to the final model (log)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
