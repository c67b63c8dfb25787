"""The speed benchmark's short mode runs and writes a complete, well-formed result file.

Only the structure and that every ratio is finite and positive are checked: timings on shared CI
machines are noise, so the targets are reported by the benchmark, not asserted here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .conftest import ROOT, run_python


def _positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_speed_benchmark_short_mode(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    proc = run_python([str(ROOT / "benchmarks" / "speed.py"), "--short", "--out", str(out)], tmp_path, 400)
    result = json.loads(out.read_text())
    assert result["short"] is True and set(result) >= {"overhead", "scaling", "search", "data", "machine"}
    overhead = result["overhead"]["rows"]
    assert {(r["encoder"], r["tasks"], r["k"]) for r in overhead} == {
        (e, n, k) for e in ("mlp", "timm:test_resnet") for n in (9, 40) for k in (2, 5)
    }
    assert all(
        _positive(r[key])
        for r in overhead
        for key in ("overhead", "dmtg_step_ms", "branch_step_ms", "grouped_step_ms", "overhead_vs_grouped")
    )
    scaling = result["scaling"]
    assert len(scaling["rows"]) == 4 and all(_positive(r["ratio_40_over_9"]) for r in scaling["rows"])
    assert len(scaling["memory"]) == 8 and all(_positive(r["activations_mb"]) for r in scaling["memory"])
    # more branches save more activations for backward
    mem = {(r["encoder"], r["k"], r["tasks"]): r["activations_mb"] for r in scaling["memory"]}
    assert mem[("timm:test_resnet", 5, 9)] > mem[("timm:test_resnet", 2, 9)]
    assert [(r["tasks"], r["k"]) for r in scaling["celeba40"]] == [(40, 8), (40, 8)]
    assert all(_positive(r["step_ms"]) for r in scaling["celeba40"])
    assert all(_positive(r["ratio"]) and _positive(r["search_s"]) for r in result["search"]["rows"])
    data = result["data"]["rows"]
    assert len(data) == 2 and all(0 <= r["wait_fraction"] <= r["gap_fraction"] < 1 for r in data)
    assert "| encoder | N | K |" in proc.stdout  # the markdown summary
