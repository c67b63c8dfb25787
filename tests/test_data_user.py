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
