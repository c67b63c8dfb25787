"""`dmtg retrain` and `dmtg benchmark` end to end on tiny data: files, tables, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

import dmtg_nas
from dmtg_nas.benchmark import run_benchmark, summarize_runs
from dmtg_nas.cli import main

from .conftest import planted_doc


def test_retrain_from_scratch_and_from_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = dmtg_nas.load_spec(planted_doc())
    run = tmp_path / "run"
    result = dmtg_nas.search(spec, run, progress=False)
    assert main(["retrain", str(run), "--epochs", "2", "--quiet"]) == 0
    metrics = json.loads((run / "retrain" / "metrics.json").read_text())
    assert metrics["retrain"] == {**metrics["retrain"], "init": "scratch", "epochs": 2, "groups": result.groups}
    assert (run / "retrain" / "model.pt").is_file()
    assert "retrained (scratch, 2 epochs): test total loss" in capsys.readouterr().out

    out = tmp_path / "from-search"
    assert main(["retrain", str(run), "--init", "search", "--epochs", "3", "--out", str(out), "-q"]) == 0
    cont = json.loads((out / "metrics.json").read_text())
    # continuing training from the search weights improves on the search's own test loss
    assert cont["totals"]["test"]["total_loss"] < result.metrics["totals"]["test"]["total_loss"]


def test_retrain_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["retrain", str(tmp_path)]) == 2
    assert "not a finished search (no config.yaml)" in capsys.readouterr().err


def test_benchmark_writes_tables_and_resumes(tmp_path: Path) -> None:
    spec = dmtg_nas.load_spec(planted_doc(), ["strategy.epochs=1"])
    out = tmp_path / "bench"
    records = run_benchmark(spec, ["naive", "stl", "random"], 2, out)
    # the order rotates with the seed: no method always runs first
    assert [(r["method"], r["seed"]) for r in records] == [
        ("naive", 0), ("stl", 0), ("random", 0), ("stl", 1), ("random", 1), ("naive", 1),
    ]  # fmt: skip
    for name in ("results.md", "results.csv", "results.json", "results.png"):
        assert (out / name).is_file()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and float(rows[0]["test_total_loss"]) == pytest.approx(
        records[0]["metrics"]["totals"]["test"]["total_loss"]
    )
    table = (out / "results.md").read_text()
    assert "| stl | partition | 2 |" in table and "0.00 ± 0.00" in table  # STL vs itself: Delta_m = 0
    summary = {r["method"]: r for r in summarize_runs(records, spec)}
    assert summary["stl"]["trainings"] == 4 and summary["naive"]["trainings"] == 1
    assert summary["naive"]["groups"] == [spec.task_names]

    with pytest.raises(dmtg_nas.DmtgError, match="already exists"):
        run_benchmark(spec, ["naive"], 1, out)
    more = run_benchmark(spec, ["naive", "stl", "random"], 3, out, resume=True)
    assert len(more) == 9 and more[:6] == json.loads(json.dumps(records))


def test_benchmark_cli_refuses_unknown_method_and_hoa_on_many_tasks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(planted_doc()))
    assert main(["benchmark", str(spec), "--methods", "dmtg,tga", "--out", str(tmp_path / "b")]) == 2
    assert "unknown method 'tga' (did you mean 'tag'?)" in capsys.readouterr().err
    assert main(["benchmark", "planted", "--methods", "hoa", "--set", "dataset.group_sizes=[4,4,3]",
                 "--set", "tasks=" + json.dumps([{"name": f"t{i}", "type": "regression"} for i in range(11)]),
                 "--out", str(tmp_path / "c")]) == 2  # fmt: skip
    assert "trains 2^11 - 1 networks" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_preloaded_imports_leave_nothing_for_a_first_timed_run() -> None:
    # a fresh interpreter: after the benchmark's preload, a DMTG search (warm start, one-shot search,
    # merge check) and TAG import no module of NNI, scikit-learn or the package on first use
    import subprocess
    import sys

    doc = planted_doc()
    doc["strategy"].update({"epochs": 1, "finetune": {"epochs": 1}, "warmup": {"epochs": 1, "min_steps": 0}})
    doc["strategy"]["local_search"] = {"enabled": True, "replicates": 1, "rounds": 1, "max_candidates": 2}
    code = f"""
import sys, warnings
warnings.filterwarnings("ignore")
import dmtg_nas
from dmtg_nas.baselines import run_method
from dmtg_nas.benchmark import preload_method_imports
from dmtg_nas.components import load_data
spec = dmtg_nas.load_spec({doc!r}, ["strategy.batch_size=128"])
data = load_data(spec)
preload_method_imports()
before = set(sys.modules)
for method in ("dmtg", "tag"):
    result = run_method(method, spec, data)
    assert result.total_seconds > 0
new = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("nni", "sklearn", "dmtg_nas"))
print("NEW", new)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "NEW []" in done.stdout, done.stdout[-2000:]


def test_benchmark_one_seed_no_spread_validation_loss_and_ari(tmp_path: Path) -> None:
    spec = dmtg_nas.load_spec(planted_doc(), ["strategy.epochs=1"])
    out = tmp_path / "bench"
    records = run_benchmark(spec, ["naive", "stl"], 1, out)
    table = (out / "results.md").read_text()
    assert "±" not in table and "One seed: no spread" in table
    assert "| ARI vs planted |" in table
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    for r in records:
        assert float(rows[r["method"]]["val_total_loss"]) == pytest.approx(r["metrics"]["totals"]["val"]["total_loss"])
    # naive: one group for the planted pairs {t0, t1}, {t2, t3}; STL: singletons; neither agrees beyond chance
    assert float(rows["naive"]["adjusted_rand_index"]) == pytest.approx(0.0)
    summary = {r["method"]: r for r in summarize_runs(records, spec, [["t0", "t1"], ["t2", "t3"]])}
    assert summary["naive"]["adjusted_rand_index"] == (pytest.approx(0.0), None)
