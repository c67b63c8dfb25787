"""Stage 5: the outputs of a search: ``metrics.json`` and the other files, and the result object.

``metrics.json`` holds the final network's ``val`` and ``test`` rows and ``totals``; ``search``:
epochs, each stage's wall time (``warm_start_seconds``, ``search_seconds`` (the supernet alone),
``finetune_seconds``, ``check_seconds``, ``total_seconds``), K, the branches used, the data sizes,
``kept`` (the supernet's epoch the grouping comes from: ``strategy.keep``);
``stages``: each stage's grouping and time; ``nonfinite``; ``local_search`` (the merge check);
``warmup``; ``affinity`` (the affinity scout: the measured affinity and its clusters); ``alignment`` (the
gradient alignment: its measurements and the similarity it ended with); ``polish``
(the relaxation's grouping before the polish and the polish's moves); ``reference`` (normalized
gain and Delta_m, with a ``reference`` in the spec);
``ground_truth`` (the adjusted Rand index, for data sets with a known partition).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data import TaskData
from ..metrics import compare_to_reference, load_reference
from ..network import groups_from_sample
from ..plots import plot_probabilities
from ..schema import SearchSpec
from ..tasks import summarize
from ..warmstart import WarmStart
from .context import RunContext
from .records import CheckRecord, FinetuneRecord, SearchRecord, SearchResult, StageRecord, Timings

__all__ = ["adjusted_rand_index", "search_result", "stage_records", "write_json", "write_outputs"]


def stage_records(
    ctx: RunContext,
    warm: WarmStart | None,
    search: SearchRecord,
    tuned: FinetuneRecord,
    check: CheckRecord,
    timings: Timings,
) -> list[StageRecord]:
    """Each stage that ran, with the grouping after it and its wall time."""
    spec = ctx.spec

    def groups(sample: Mapping[str, int]) -> list[list[str]]:
        return groups_from_sample(spec.task_names, sample, spec.groups)

    stages = []
    if warm is not None:  # (a resumed run reads it back: no time spent on it here)
        stages.append(StageRecord("warm_start", groups(dict(zip(spec.task_names, warm.clusters))), timings.warm_start))
    names = spec.task_names
    if search.affinity is not None:  # inside the supernet's training: its seconds are part of the search's
        clusters = dict(zip(names, search.affinity["clusters"]))
        stages.append(StageRecord("affinity", groups(clusters), search.affinity["seconds"]))
    if search.polish is not None:  # the relaxation's argmax, then its polish
        stages.append(StageRecord("search", groups(dict(zip(names, search.polish["relaxed"]))), timings.search))
        stages.append(StageRecord("polish", groups(search.sample), 0.0))
    else:
        stages.append(StageRecord("search", groups(search.sample), timings.search))
    if tuned.not_run is None:
        stages.append(StageRecord("finetune", groups(search.sample), timings.finetune))
    if check.record is not None and "rounds" in check.record:
        stages.append(StageRecord("check", groups(check.sample), timings.check))
    return stages


def search_result(
    ctx: RunContext,
    warm: WarmStart | None,
    search: SearchRecord,
    tuned: FinetuneRecord,
    check: CheckRecord,
    history: list[dict[str, Any]],
    timings: Timings,
    warm_skipped: str | None = None,
) -> SearchResult:
    """Evaluate the final network and gather everything the search reports; ``warm_skipped``: why
    ``warmup.method: auto`` left the warm start off (the warm start stage's)."""
    spec, data, strat = ctx.spec, ctx.data, ctx.strategy
    model, sample = check.model, check.sample
    per_split = {"val": check.search_val or ctx.evaluate(model, "val"), "test": ctx.evaluate(model, "test")}
    groups = groups_from_sample(spec.task_names, sample, spec.groups)
    skipped = [*search.skipped, *tuned.skipped, *check.skipped]
    stages = stage_records(ctx, warm, search, tuned, check, timings)
    trained = strat.epochs - search.unused_epochs(strat.epochs)  # fewer where it stopped once decided
    metrics: dict[str, Any] = {
        "val": per_split["val"],
        "test": per_split["test"],
        "totals": {split: summarize(per_split[split], spec.tasks) for split in per_split},
        "search": {
            "epochs": trained,
            "finetune_epochs": tuned.epochs,
            "finetune_not_run": tuned.not_run,
            "decided_epoch": search.decided_epoch,
            "warm_start_seconds": round(timings.warm_start, 3),
            "search_seconds": round(timings.search, 3),
            "finetune_seconds": round(timings.finetune, 3),
            "check_seconds": round(timings.check, 3),
            "total_seconds": round(timings.total, 3),
            "num_branches": spec.groups,
            "branches_used": len(groups),
            "data_sizes": data.sizes(),
            "resumed": ctx.resume_from is not None,
            "kept": search.kept or {"policy": "last", "epoch": trained},
        },
        "stages": [s.to_dict() for s in stages],
        "nonfinite": {"policy": strat.nonfinite, "skipped_batches": len(skipped), "batches": skipped[:100]},
    }
    if check.record is not None:
        metrics["local_search"] = check.record
    if warm is not None:
        metrics["warmup"] = {
            "method": "attribution",
            "clusters": groups_from_sample(spec.task_names, dict(zip(spec.task_names, warm.clusters)), spec.groups),
            "affinity": warm.affinity,
            "seconds": round(warm.seconds, 3),
        }
    elif warm_skipped is not None:
        metrics["warmup"] = {"method": "none", "skipped": warm_skipped}
    if search.affinity is not None:
        scout = search.affinity
        metrics["affinity"] = {
            **scout,
            "clusters": groups_from_sample(spec.task_names, dict(zip(spec.task_names, scout["clusters"])), spec.groups),
        }
    if search.alignment is not None:
        metrics["alignment"] = search.alignment
    if search.polish is not None:
        relaxed = dict(zip(spec.task_names, search.polish["relaxed"]))
        metrics["polish"] = {
            "relaxed": groups_from_sample(spec.task_names, relaxed, spec.groups),
            "moves": search.polish["moves"],
        }
    if spec.reference is not None:
        refs = [spec.reference] if isinstance(spec.reference, str) else list(spec.reference)
        comparison = compare_to_reference(per_split, load_reference(refs), spec.tasks)
        metrics["reference"] = {"files": refs, **comparison}
    if data.ground_truth is not None:
        metrics["ground_truth"] = {
            "groups": data.ground_truth,
            "adjusted_rand_index": adjusted_rand_index(groups, data.ground_truth),
            "exact": sorted(map(sorted, groups)) == sorted(map(sorted, data.ground_truth)),
        }
    return SearchResult(
        groups=groups,
        assignment={name: int(sample[name]) for name in spec.task_names},
        probabilities=search.probabilities,
        num_branches=spec.groups,
        model=model,
        metrics=metrics,
        history=history,
        out_dir=ctx.out,
        ground_truth=data.ground_truth,
        timings=timings,
        stages=stages,
    )


def adjusted_rand_index(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> float:
    """Adjusted Rand index between two partitions of the same tasks (1.0 = identical)."""
    from sklearn.metrics import adjusted_rand_score

    names = sorted(t for g in truth for t in g)
    label_found = {t: i for i, g in enumerate(found) for t in g}
    label_truth = {t: i for i, g in enumerate(truth) for t in g}
    return float(adjusted_rand_score([label_truth[t] for t in names], [label_found[t] for t in names]))


def write_outputs(result: SearchResult, spec: SearchSpec, data: TaskData) -> None:
    """Write every output file of a finished search into ``result.out_dir``."""
    out = result.out_dir
    assert out is not None
    write_json(
        out / "grouping.json",
        {
            "groups": result.groups,
            "assignment": result.assignment,
            "probabilities": result.probabilities,
            "num_branches": result.num_branches,
        },
    )
    write_json(out / "metrics.json", result.metrics)
    write_json(out / "history.json", result.history)
    result.model.save(out / "model.pt")
    if data.ground_truth is not None:
        write_json(out / "planted_groups.json", {"groups": data.ground_truth})
    plot_probabilities(result.history, spec.task_names, out / "probabilities.png", assignment=result.assignment)


def write_json(path: Path, payload: Mapping[str, Any] | list[Any]) -> None:
    """Write JSON atomically (a temporary file moved into place)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
