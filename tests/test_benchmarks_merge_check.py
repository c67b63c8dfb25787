"""The merge check replay (benchmarks/merge_check_variants.py) on a one-run suite: its rows follow
from the cached trainings as the suite scores them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dmtg_nas.suite import SHAPES, Shape, run_suite

ROOT = Path(__file__).resolve().parents[1]
FAST = ("strategy.epochs=1", "strategy.finetune.epochs=0", "strategy.warmup.epochs=2", "strategy.warmup.min_steps=0")


def test_replay_scores_like_the_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SHAPES, "tiny3", Shape("tiny3", (2, 1), 2, samples=300))
    (record,) = run_suite("dmtg-oneshot", ["tiny3"], [0], tmp_path, overrides=FAST)
    spec = importlib.util.spec_from_file_location("replay", ROOT / "benchmarks" / "merge_check_variants.py")
    assert spec is not None and spec.loader is not None
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    argv = ["merge_check_variants.py", str(tmp_path), "--strategy", "dmtg-oneshot", "--replicates", "3"]
    for override in FAST:
        argv += ["--set", override]
    monkeypatch.setattr(sys, "argv", argv)
    replay.main()
    cached = json.loads((tmp_path / "replicates.json").read_text())
    assert sorted(cached) == ["tiny3/0/1", "tiny3/0/2", "tiny3/0/3"] and len(cached["tiny3/0/1"]) == 7
    rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in (tmp_path / "merge_check_variants.md").read_text().splitlines()
        if line.startswith("| ") and not line.startswith("| variant")
    }
    assert len(rows) == len(replay.VARIANTS)
    # no check: the one-shot grouping itself, in all three rotations: the suite's own gap
    none = rows["one-shot grouping, no check"]
    assert float(none[4]) == pytest.approx(record["gap_percent"], abs=0.05)
    assert none[1] == ("100.0%" if record["gap_percent"] <= 2.0 else "0.0%")
    # exhaustive HOA on one training per subset: the best partition of each replicate table,
    # scored on the suite's reference
    names = ["t1", "t2", "t3"]
    ref = json.loads((tmp_path / "references.json").read_text())
    (table_key,) = ref
    reference = ref[table_key]

    def loss(table: dict, split: str, part: list[int]) -> float:
        return sum(table[str(m)][split][names[i]]["loss"] for m in part for i in range(3) if m >> i & 1)

    parts = [[7], [1, 6], [2, 5], [4, 3]]  # every partition of three tasks into at most 2 groups
    best = min(parts, key=lambda p: loss(reference, "val", p))
    gaps = []
    for k in ("1", "2", "3"):
        pick = min(parts, key=lambda p: loss(cached[f"tiny3/0/{k}"], "val", p))
        gaps.append(
            100 * (loss(reference, "test", pick) - loss(reference, "test", best)) / loss(reference, "test", best)
        )
    assert float(rows["exhaustive HOA, 1 training per subset"][4]) == pytest.approx(sum(gaps) / 3, abs=0.05)
