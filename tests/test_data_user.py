"""User data given as ``package.module:function``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import dmtg_nas
from dmtg_nas import DataError, SpecError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


def _doc(**kw):
    doc = {
        "name": "user",
        "dataset": {"name": "user_dataset:sensors", "samples": 300},
        "backbone": {"name": "mlp", "hidden": [8]},
        "groups": 2,
        "strategy": {"_base_": "dmtg", "epochs": 1, "batch_size": 64, "finetune": {"epochs": 0}},
    }
    doc.update(kw)
    return doc


def test_tasks_come_from_the_function_and_a_search_runs() -> None:
    spec = dmtg_nas.load_spec(_doc())
    assert [t.name for t in spec.tasks] == ["temperature", "humidity", "alarm", "mode"]
    result = dmtg_nas.search(spec, None, progress=False)
    assert sorted(t for g in result.groups for t in g) == sorted(spec.task_names)


def test_spec_may_pick_a_subset_with_matching_types() -> None:
    spec = dmtg_nas.load_spec(_doc(tasks=[{"name": "alarm", "type": "binary"}]))
    assert spec.task_names == ["alarm"]
    dmtg_nas.search(spec, None, progress=False)
    with pytest.raises(SpecError, match="defines 'alarm' as binary, not regression"):
        dmtg_nas.search(dmtg_nas.load_spec(_doc(tasks=[{"name": "alarm", "type": "regression"}])), None)
    with pytest.raises(SpecError, match="defines no task 'alarn'"):
        dmtg_nas.search(dmtg_nas.load_spec(_doc(tasks=[{"name": "alarn", "type": "binary"}])), None)


def test_import_errors_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="cannot import module 'no_such_module'"):
        dmtg_nas.load_spec(_doc(dataset={"name": "no_such_module:fn"}))
    with pytest.raises(SpecError, match="has no attribute 'nope'"):
        dmtg_nas.load_spec(_doc(dataset={"name": "user_dataset:nope"}))
    with pytest.raises(SpecError, match="does not accept these options"):
        dmtg_nas.load_spec(_doc(dataset={"name": "user_dataset:sensors", "sample": 3}))
    assert "user_dataset" in sys.modules
    with pytest.raises(DataError, match="must return a TaskData or a mapping"):
        dmtg_nas.load_spec(_doc(dataset={"name": "user_dataset:broken"}))


# ----------------------------------------------------------------------------------------------
# The documented commands, run as the `dmtg` script runs them: no PYTHONPATH, and (unlike
# `python -m`) the current folder not on sys.path
# ----------------------------------------------------------------------------------------------

SENSORS = """name: sensors
dataset: {name: "user_dataset:sensors", samples: 300}
backbone: {name: mlp, hidden: [8]}
branches: 2
"""
QUICK = ["--set", "strategy.epochs=1", "--set", "strategy.finetune.epochs=0", "--set", "strategy.warmup.min_steps=0"]


def _dmtg(args: list[str], cwd: Path) -> str:
    """Run the command line in a fresh process, as the installed ``dmtg`` script would."""
    import os
    import subprocess

    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from dmtg_nas.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-P", "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_documented_commands_find_user_modules_in_the_current_folder(tmp_path: Path) -> None:
    """``cd examples && dmtg validate user_encoder.yaml && dmtg search user_encoder.yaml``, and a data
    set spec elsewhere (``cd examples && dmtg search ../runs/sensors.yaml``)."""
    examples = ROOT / "examples"
    assert "backbone user_encoder:gated_mlp" in _dmtg(["validate", "user_encoder.yaml"], examples)
    _dmtg(["search", "user_encoder.yaml", *QUICK, "--out", str(tmp_path / "encoder"), "-q"], examples)
    assert (tmp_path / "encoder" / "grouping.json").is_file()
    spec = tmp_path / "runs" / "sensors.yaml"
    spec.parent.mkdir()
    spec.write_text(SENSORS)
    _dmtg(["search", str(spec), *QUICK, "--out", str(tmp_path / "sensors"), "-q"], examples)
    assert (tmp_path / "sensors" / "grouping.json").is_file()


def test_user_modules_are_found_next_to_the_spec(tmp_path: Path) -> None:
    """``dmtg search examples/user_encoder.yaml`` from another folder."""
    _dmtg(
        ["search", str(ROOT / "examples" / "user_encoder.yaml"), *QUICK, "--out", str(tmp_path / "o"), "-q"], tmp_path
    )
    assert (tmp_path / "o" / "grouping.json").is_file()
