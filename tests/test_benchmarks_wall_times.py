"""The side-by-side wall-time benchmark: its report, its argument checks and one real round."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import wall_times


def test_report_gives_medians_and_the_first_checkouts_ratio() -> None:
    rounds = [
        {"old": {"tag": 9.0}, "new": {"tag": 6.0}},
        {"old": {"tag": 12.0}, "new": {"tag": 5.0}},
        {"old": {"tag": 10.0}, "new": {"tag": 4.0}},
    ]
    table = wall_times.report(["old", "new"], rounds, ["tag"]).splitlines()
    assert table[0] == "| measure | old s | new s | old / new |"
    assert table[2] == "| tag | 10.00 | 5.00 | 2.00 |"  # medians 10 and 5


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        wall_times.main(["--only", "nothing"])
    with pytest.raises(SystemExit):
        wall_times.main(["--checkout", str(tmp_path)])  # not a checkout


@pytest.mark.slow
def test_one_round_times_a_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "wall.json"
    wall_times.main(["--checkout", str(ROOT), "--rounds", "1", "--only", "train_partition", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["spec"] == "planted6" and len(doc["rounds"]) == 1
    seconds = doc["rounds"][0][str(ROOT)]["train_partition"]
    assert 0 < seconds < 600
    assert "| train_partition |" in capsys.readouterr().out
