"""The all-task merge replay (benchmarks/all_task_merge.py) on a hand-made suite folder: which groups
it merges, and the gaps and counts it reports, follow from the reference's numbers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from dmtg_nas.suite import SHAPES, Shape, reference_key, shape_spec

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["t1", "t2", "t3"]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("all_task_merge", ROOT / "benchmarks" / "all_task_merge.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(losses: dict[int, dict[str, float]]) -> dict:
    """A reference training: every subset network's per-task loss (1.0 unless given), val = test."""
    table = {}
    for mask in range(1, 8):
        rows = {NAMES[i]: {"loss": losses.get(mask, {}).get(NAMES[i], 1.0)} for i in range(3) if mask >> i & 1}
        table[mask] = {"val": rows, "test": rows}
    return table


def test_groups_doing_better_in_the_all_task_network_are_merged() -> None:
    merge = _module().merged
    singles = [0b001, 0b010, 0b100]
    # t1 and t2 do better in the all-task network than alone, t3 worse: t1 and t2 merge
    both = _table({0b111: {"t1": 0.5, "t2": 0.5, "t3": 2.0}})
    assert sorted(merge(singles, both, NAMES)) == [0b011, 0b100]
    # one group alone doing better has nothing to merge with
    one = _table({0b111: {"t1": 0.5, "t2": 2.0, "t3": 2.0}})
    assert merge(singles, one, NAMES) == singles
    # every group better: all tasks in one group
    assert merge(singles, _table({0b111: {"t1": 0.5, "t2": 0.5, "t3": 0.5}}), NAMES) == [0b111]


def test_replay_reports_the_stage_the_mean_reference_and_each_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(SHAPES, "tiny3", Shape("tiny3", (2, 1), 2, samples=300))
    # training 0: t1 and t2 better in the all-task network (merge); training 1: all worse (keep);
    # their mean (1.25 for t1 and t2 against 1.0 alone): keep. The merged pair's own network: 0.6 each.
    first = _table({0b111: {"t1": 0.5, "t2": 0.5, "t3": 2.0}, 0b011: {"t1": 0.6, "t2": 0.6}})
    second = _table({0b111: {"t1": 2.0, "t2": 2.0, "t3": 2.0}, 0b011: {"t1": 0.6, "t2": 0.6}})
    # the suite's own cache keys for this shape, seed and budget, two trainings
    key = reference_key(SHAPES["tiny3"], 0, shape_spec(SHAPES["tiny3"], "dmtg", 0), 2)
    base = key.removesuffix("/reference-x2")
    references = {f"{base}/reference/training-0": first, f"{base}/reference/training-1": second}
    record = {
        "shape": "tiny3",
        "seed": 0,
        "strategy": "dmtg",
        "reference": "exhaustive",
        "reference_key": key,
        "optimum_test_loss": 2.5,
        "planted": [["t1", "t2"], ["t3"]],
        "planted_is_optimum": False,
        "stages": [{"stage": "warm_start", "groups": [["t1"], ["t2"], ["t3"]]}],
    }
    (tmp_path / "suite.json").write_text(json.dumps([record]))
    (tmp_path / "references.json").write_text(json.dumps(references))
    module = _module()
    result = module.replay(
        [record], {k: {int(m): v for m, v in t.items()} for k, t in references.items()}, "warm_start"
    )
    # the singles: 3.0 on test against the optimum's 2.5 (+20%); merged: 1.2 + 1.0 (-12%)
    assert result["stage"] == [(pytest.approx(20.0), False)]
    assert result["mean"] == [(pytest.approx(20.0), False)]
    assert [g for g, _ in result["one training"][0]] == [pytest.approx(-12.0), pytest.approx(20.0)]
    monkeypatch.setattr(sys, "argv", ["all_task_merge.py", str(tmp_path)])
    module.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "%" not in line]
    assert rows[0] == "| after warm_start | 0 of 1 | - | 0 of 1 | 20.0 |"
    assert rows[1] == "| merged by the all-task network (mean reference) | 0 of 1 | - | 0 of 1 | 20.0 |"
    assert rows[2] == "| merged by the all-task network (one training) | 0.5 of 1 | - | 0.5 of 1 | 4.0 |"
