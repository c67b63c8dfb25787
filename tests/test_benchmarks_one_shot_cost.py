"""The one-shot cost benchmark: its specs, summary, table, argument checks, the CelebA index it
generates, and one tiny real round."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import one_shot_cost

from dmtg_nas.config import load_spec
from dmtg_nas.data.celeba import read_celeba_index


def _run(total: float, warm: float = 1.0) -> dict[str, Any]:
    return {"warm_start": warm, "supernet": 2.0, "finetune": 0.5, "check": 0.25, "total": total, "peak_rss_mb": 900.0}


def _check_ratios(doc: dict[str, Any]) -> None:
    """Every row's numbers recomputed from the rounds it summarizes."""
    for row in doc["rows"]:
        rounds = doc["rounds"][row["problem"]]
        k = row["k"]
        runs = [r[row["strategy"]][str(k)] for r in rounds]
        single = [r["all_tasks"]["seconds"] for r in rounds]
        assert row["total_s"] == pytest.approx(statistics.median(r["total"] for r in runs))
        assert row["all_tasks_s"] == pytest.approx(statistics.median(single))
        assert row["ratio"] == pytest.approx(statistics.median(r["total"] / (k * s) for r, s in zip(runs, single)))
        assert row["ratio_of_medians"] == pytest.approx(row["total_s"] / (k * row["all_tasks_s"]))
        stages = {s: row[f"{s}_s"] for s in one_shot_cost.STAGES}
        assert row["dominant_stage"] == max(stages, key=lambda s: stages[s])
        assert row["dominant_share"] == pytest.approx(stages[row["dominant_stage"]] / row["total_s"])


def test_summary_takes_medians_and_the_ratio_of_the_same_round() -> None:
    rounds = [
        {"all_tasks": {"seconds": 2.0, "peak_rss_mb": 800.0}, "dmtg": {"4": _run(16.0)}},  # 16 / (4 x 2) = 2
        {"all_tasks": {"seconds": 1.0, "peak_rss_mb": 810.0}, "dmtg": {"4": _run(12.0)}},  # 12 / (4 x 1) = 3
        {"all_tasks": {"seconds": 4.0, "peak_rss_mb": 820.0}, "dmtg": {"4": _run(8.0, warm=5.0)}},  # 8 / 16 = 0.5
    ]
    row = one_shot_cost.summarize("planted40", 4, rounds)
    assert row["ratio"] == 2.0  # the median of 2, 3, 0.5
    assert row["total_s"] == 12.0 and row["all_tasks_s"] == 2.0 and row["ratio_of_medians"] == 1.5
    assert row["dominant_stage"] == "supernet" and row["warm_start_s"] == 1.0
    assert row["all_tasks_peak_rss_mb"] == 810.0
    _check_ratios({"rows": [row], "rounds": {"planted40": rounds}})
    table = one_shot_cost.report([row], {"planted40": 40}).splitlines()
    assert table[0].startswith("| problem | N | K | warm start s |")
    assert table[2] == (
        "| planted40 | 40 | 4 | 1.00 | 2.00 | 0.50 | 0.25 | 12.00 | 2.00 | 2.00 | supernet (17%) | 900 | 810 |"
    )
    # another strategy in the same rounds: its own runs, the same all-task networks, a strategy column
    for r, total in zip(rounds, (8.0, 8.0, 32.0)):
        r["align-check"] = {"4": _run(total, warm=0.0)}
    other = one_shot_cost.summarize("planted40", 4, rounds, "align-check")
    assert other["strategy"] == "align-check" and other["ratio"] == 2.0  # the median of 1, 2, 2
    assert other["all_tasks_s"] == row["all_tasks_s"] and other["warm_start_s"] == 0.0
    _check_ratios({"rows": [row, other], "rounds": {"planted40": rounds}})
    both = one_shot_cost.report([row, other], {"planted40": 40}).splitlines()
    assert both[0].startswith("| strategy | problem | N | K |") and both[3].startswith(
        "| align-check | planted40 | 40 | 4 |"
    )
    assert one_shot_cost.strategy_label("benchmarks/strategies/align-check.yaml") == "align-check"
    assert one_shot_cost.strategy_label("dmtg-fast") == "dmtg-fast"


def test_problem_specs() -> None:
    planted9 = load_spec(one_shot_cost.problem_doc("planted9", 3))
    assert len(planted9.tasks) == 9 and planted9.groups == 3 and planted9.strategy.epochs == 40
    planted40 = load_spec(one_shot_cost.problem_doc("planted40", 8, epochs_scale=0.5, samples_scale=0.5))
    assert planted40.task_names == [f"t{i}" for i in range(1, 41)] and planted40.groups == 8
    assert planted40.strategy.epochs == 20 and planted40.strategy.finetune.epochs == 5
    assert planted40.strategy.warmup.min_steps == 125
    image = load_spec(one_shot_cost.problem_doc("image40", 2, image_size=12))
    assert image.backbone.name == "celeba_resnet" and {t.type for t in image.tasks} == {"binary"}
    assert (image.strategy.warmup.epochs, image.strategy.epochs, image.strategy.finetune.epochs) == (2, 10, 5)
    align = str(ROOT / "benchmarks" / "strategies" / "align-check.yaml")
    for problem in ("planted9", "planted40", "image40"):
        other = load_spec(one_shot_cost.problem_doc(problem, 2, strategy=align)).strategy
        assert other.name == "align-check" and other.warmup.method == "none" and other.alignment.enabled
    # the problem's budget holds for every strategy (image40: celeba40's)
    assert load_spec(one_shot_cost.problem_doc("image40", 2, strategy=align)).strategy.epochs == 10
    digits = load_spec(one_shot_cost.problem_doc("digits9", 3, samples_scale=2.0))
    assert (digits.dataset.name, digits.backbone.name, len(digits.tasks), digits.groups) == ("digits", "convnet", 9, 3)
    assert digits.strategy.epochs == 40 and digits.strategy.trainer.accelerator == "cpu"
    with pytest.raises(ValueError):
        one_shot_cost.problem_doc("nothing", 2)


def test_arguments_are_checked() -> None:
    bad = (["--problems", "nothing"], ["--branches", "0"], ["--branches", "x"], ["--rounds", "0"])
    bad += (["--strategy", "no-such-preset"], ["--strategy", "dmtg", "--strategy", "dmtg"])
    for argv in bad:
        with pytest.raises(SystemExit):
            one_shot_cost.main(argv)


def test_the_generated_celeba_index_reads_as_the_release(tmp_path: Path) -> None:
    root = one_shot_cost.write_celeba_index(tmp_path, n=1000)
    files, labels, partition = read_celeba_index(root, ["Smiling", "Young"])
    assert files[0] == b"000001.jpg" and labels.shape == (1000, 2)
    assert sorted(set(partition.tolist())) == [0, 1, 2] and (partition == 0).sum() == round(162_770 / 202.599)
    timed = one_shot_cost.time_index(500, 2)
    assert timed["entries"] == 500 and len(timed["seconds"]) == 2 and timed["median_s"] > 0


@pytest.mark.slow
def test_a_tiny_round_measures_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cost.json"
    argv = ["--problems", "planted9", "--branches", "2", "--rounds", "1", "--epochs-scale", "0.05"]
    align = str(ROOT / "benchmarks" / "strategies" / "align-check.yaml")
    one_shot_cost.main([*argv, "--samples-scale", "0.1", "--out", str(out), "--strategy", "dmtg", "--strategy", align])
    doc = json.loads(out.read_text())
    assert doc["tasks"] == {"planted9": 9} and doc["branches"] == {"planted9": [2]} and doc["machine"]["cpus"]
    assert doc["strategies"] == {"dmtg": "dmtg", "align-check": align}
    default, aligned = doc["rows"]  # side by side, against the same all-task network
    assert (default["strategy"], aligned["strategy"]) == ("dmtg", "align-check")
    assert default["all_tasks_s"] == aligned["all_tasks_s"]
    run = doc["rounds"]["planted9"][0]["dmtg"]["2"]
    assert run["total"] >= max(run[s] for s in one_shot_cost.STAGES) > 0 and run["peak_rss_mb"] > 0
    # the default trains single-task networks for its warm start; the alignment's uniform start none
    assert run["warm_start"] > 0 and doc["rounds"]["planted9"][0]["align-check"]["2"]["warm_start"] == 0
    assert doc["rounds"]["planted9"][0]["all_tasks"]["epochs"] == 3  # (40 + 10) x 0.05, rounded per budget
    _check_ratios(doc)
    table = capsys.readouterr().out
    assert table.startswith("| strategy | problem | N | K |")
    assert f"| align-check | planted9 | 9 | 2 | {aligned['warm_start_s']:.2f} |" in table
