"""Comparisons against reference results: normalized gain and Delta_m (method.md §3).

A reference is one or more JSON files of per-task results, usually single-task (STL) runs: the
``metrics.json`` that ``dmtg search`` writes (``{"val": {task: {...}}, "test": {task: {...}}}``) or a
bare ``{task: {metric: value}}`` mapping (read as test results). Several files are merged, later ones
winning per task, so N single-task runs make one reference.

- normalized gain (DMTG): ``100 * mean_t s_t (r_t - m_t) / r_t`` on each task's primary metric
  (``tasks.PRIMARY_METRIC``: error for classification, so this is ``(e_ref - e) / e_ref``),
- Delta_m (the MTL field's headline): ``100 / T * sum_t (1 / M_t) sum_j s_tj (r_tj - m_tj) / r_tj``
  over each task's evaluation metrics (``tasks.EVAL_METRICS``),

where ``s = +1`` when lower is better and ``-1`` when higher is better. Positive means better than the
reference. Tasks or metrics missing from the reference (or zero there) are left out and listed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import DataError
from .schema import EVAL_METRICS, HIGHER_IS_BETTER, PRIMARY_METRIC, TaskConfig

__all__ = ["load_reference", "relative_gain", "compare_to_reference"]

Results = dict[str, dict[str, dict[str, float]]]  # split -> task -> metric -> value


def load_reference(paths: str | Path | Sequence[str | Path]) -> Results:
    """Read and merge reference files into ``{split: {task: {metric: value}}}``."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: Results = {}
    for raw in paths:
        path = Path(raw)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataError(f"{path}: cannot read the reference file ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: the reference file is not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except (UnicodeDecodeError, RecursionError) as exc:
            what = "nests too deep" if isinstance(exc, RecursionError) else "is not UTF-8 text"
            raise DataError(f"{path}: the reference file {what}") from None
        if not isinstance(doc, dict):
            raise DataError(f"{path}: a reference file must hold a JSON object")
        splits = {s: doc[s] for s in ("val", "test") if isinstance(doc.get(s), dict)} or {"test": doc}
        for split, rows in splits.items():
            for task, row in rows.items():
                if not isinstance(row, dict):
                    continue
                values = {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
                merged.setdefault(split, {})[task] = values
    return merged


def relative_gain(metric: str, value: float, reference: float) -> float | None:
    """``s * (r - m) / r`` (a fraction; positive = better), or None when undefined."""
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return None
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    return sign * (reference - value) / abs(reference)


def compare_to_reference(
    results: Mapping[str, Mapping[str, Mapping[str, float]]],
    reference: Results,
    tasks: Sequence[TaskConfig],
) -> dict[str, Any]:
    """Normalized gain and Delta_m (in %) of ``results`` (``{split: {task: {metric: v}}}``) per split."""
    out: dict[str, Any] = {}
    for split, rows in results.items():
        ref_rows = reference.get(split) or {}
        if not ref_rows:
            continue
        gains: list[float] = []
        deltas: list[float] = []
        per_task: dict[str, dict[str, float]] = {}
        missing: list[str] = []
        for task in tasks:
            mine, ref = rows.get(task.name, {}), ref_rows.get(task.name)
            if ref is None:
                missing.append(task.name)
                continue
            primary = PRIMARY_METRIC[task.type]
            g = relative_gain(primary, mine.get(primary, math.nan), ref.get(primary, math.nan))
            task_deltas = [
                d
                for m in EVAL_METRICS[task.type]
                if (d := relative_gain(m, mine.get(m, math.nan), ref.get(m, math.nan))) is not None
            ]
            row: dict[str, float] = {}
            if g is not None:
                gains.append(g)
                row["normalized_gain"] = 100.0 * g
            if task_deltas:
                deltas.append(sum(task_deltas) / len(task_deltas))
                row["delta_m"] = 100.0 * deltas[-1]
            if not row:
                missing.append(task.name)
            per_task[task.name] = row
        out[split] = {
            "normalized_gain": 100.0 * sum(gains) / len(gains) if gains else None,
            "delta_m": 100.0 * sum(deltas) / len(deltas) if deltas else None,
            "tasks": per_task,
            "not_compared": missing,
        }
    return out
