"""``benchmarks/gpu_check.py`` at tiny sizes on the CPU: a complete result file with sane values, the
table on stdout, progress on stderr, and a failing setting recorded while the others go on.

Timings on shared CI machines are noise: the values are checked for consistency (finite, positive,
samples per second from the step time, the data wait inside the step), not against targets.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, run_python

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

import gpu_check


def _positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _check_row(row: dict[str, Any], batch: int, steps: int) -> None:
    assert row["ok"] is True and row["error"] is None, row
    assert row["steps"] == steps and row["workers"] == 0
    assert _positive(row["step_ms"]) and _positive(row["samples_per_s"]) and _positive(row["warmup_s"])
    assert row["samples_per_s"] == pytest.approx(batch * 1000 / row["step_ms"], rel=1e-9)
    assert 0 <= row["data_wait_ms"] <= row["step_ms"]
    assert row["data_wait_fraction"] == pytest.approx(row["data_wait_ms"] / row["step_ms"], rel=1e-9)
    assert row["peak_gpu_mb"] is None and row["reserved_gpu_mb"] is None  # the CPU has no GPU memory
    assert row["precision"] == ("bf16-mixed" if row["amp"] else "32-true")


def test_gpu_check_tiny_on_the_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--tiny", "--compile", "off", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["cuda"] is False and result["device"].startswith("CPU")
    assert result["settings"] == {
        "steps": 2,
        "warmup": 1,
        "tiny": True,
        "compile_backend": "inductor",
        "amp_precision": "bf16-mixed",
    }
    problems = result["problems"]
    shapes = {p: (c["tasks"], c["k"], c["size"], c["batch"]) for p, c in problems.items()}
    assert shapes == {"celeba": (40, 8, 16, 8), "taskonomy": (5, 3, 32, 4)}
    rows = result["rows"]
    assert [(r["problem"], r["compile"], r["amp"]) for r in rows] == [
        ("celeba", False, False),
        ("celeba", False, True),
        ("taskonomy", False, False),
        ("taskonomy", False, True),
    ]
    for row in rows:
        _check_row(row, problems[row["problem"]]["batch"], 2)
    for plain, amp in (rows[0:2], rows[2:4]):
        assert plain["vs_plain"] == 1.0
        assert amp["vs_plain"] == pytest.approx(plain["step_ms"] / amp["step_ms"], rel=1e-9)
    assert _positive(result["seconds"])
    captured = capsys.readouterr()
    table = [
        line for line in captured.out.splitlines() if line.startswith("| celeba") or line.startswith("| taskonomy")
    ]
    assert table[0].startswith("| celeba | 40 | 8 | 16 | 8 | off | off | ")
    assert table[3].startswith("| taskonomy | 5 | 3 | 32 | 4 | off | bf16-mixed | ")
    assert len(table) == 4 and "| problem | N | K | size | batch | compile | AMP | step ms |" in captured.out
    assert (
        "[celeba] compile off, AMP off: " in captured.err
        and "[taskonomy] compile off, AMP bf16-mixed: " in captured.err
    )


def test_a_failing_setting_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu_check.json"
    argv = ["--tiny", "--problems", "taskonomy", "--compile", "off", "--amp", "off", "--out", str(out)]
    assert gpu_check.main([*argv, "--taskonomy-encoder", "timm:no_such_model"]) == 1
    (row,) = json.loads(out.read_text())["rows"]
    assert row["ok"] is False and "no_such_model" in row["error"] and "step_ms" not in row
    assert "| taskonomy | 5 | 3 | 32 | 4 | off | off | failed: " in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_check_tiny_compiled(tmp_path: Path) -> None:
    """Every setting, compile on included (through AOTAutograd without code generation: the compiled
    path, not its speed)."""
    out = tmp_path / "gpu_check.json"
    run_python(
        [str(SCRIPT), "--tiny", "--steps", "2", "--compile-backend", "aot_eager", "--out", str(out)], tmp_path, 800
    )
    result = json.loads(out.read_text())
    assert [(r["problem"], r["compile"], r["amp"]) for r in result["rows"]] == [
        (p, c, a) for p in ("celeba", "taskonomy") for c in (False, True) for a in (False, True)
    ]
    for row in result["rows"]:
        _check_row(row, result["problems"][row["problem"]]["batch"], 2)
