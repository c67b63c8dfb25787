"""The search as ordered stages: each stage's time and grouping in metrics.json, and NNI's own
experiment API running the same pipeline as ``dmtg search``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dmtg_nas
from dmtg_nas.pipeline import run_search

from .conftest import planted_doc

STAGE_KEYS = ("warm_start_seconds", "search_seconds", "finetune_seconds", "check_seconds", "total_seconds")


def test_metrics_time_and_record_every_stage(tmp_path: Path) -> None:
    # every stage: warm start, search, fine-tune (also before the check here), merge check (mlp: it runs)
    doc = planted_doc(groups=3)
    overrides = ["strategy.finetune.epochs=1", "strategy.finetune.enabled=true", "strategy.local_search.replicates=1"]
    spec = dmtg_nas.load_spec(doc, overrides)
    result = run_search(spec, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    search = metrics["search"]
    assert all(search[k] >= 0 for k in STAGE_KEYS)
    # the supernet's time no longer holds the warm start's
    assert search["warm_start_seconds"] == pytest.approx(metrics["warmup"]["seconds"], abs=1e-3)
    parts = sum(search[k] for k in STAGE_KEYS[:-1])
    assert parts <= search["total_seconds"] + 1e-3
    assert [s["stage"] for s in metrics["stages"]] == ["warm_start", "search", "finetune", "check"]
    assert metrics["stages"][0]["groups"] == metrics["warmup"]["clusters"]
    assert metrics["stages"][-1]["groups"] == json.loads((tmp_path / "run" / "grouping.json").read_text())["groups"]
    assert [s["seconds"] for s in metrics["stages"]] == [search[k] for k in STAGE_KEYS[:-1]]
    # typed: the result's timings and stages are the file's
    t = result.timings
    assert (t.warm_start, t.search, t.finetune, t.check) == pytest.approx(
        [search[k] for k in STAGE_KEYS[:-1]], abs=1e-3
    )
    assert t.decision == pytest.approx(t.warm_start + t.search + metrics["local_search"]["seconds"], abs=1e-3)
    assert [s.stage for s in result.stages] == [s["stage"] for s in metrics["stages"]]
    assert result.test_loss == metrics["totals"]["test"]["total_loss"]


def test_without_warm_start_or_check_the_stages_are_search_and_finetune() -> None:
    spec = dmtg_nas.load_spec(planted_doc(), ["strategy=dmtg-plain", "strategy.epochs=2"])
    result = run_search(spec)
    assert [s.stage for s in result.stages] == ["search", "finetune"]
    assert result.metrics["search"]["warm_start_seconds"] == 0 and result.metrics["search"]["check_seconds"] == 0


def _nni_experiment(spec: dmtg_nas.SearchSpec, workdir: Path) -> tuple[object, dmtg_nas.SearchResult]:
    from nni.nas.experiment import NasExperiment

    from dmtg_nas.nni import DMTG, experiment_inputs

    space, evaluator = experiment_inputs(spec)
    strategy = DMTG.from_config(spec.strategy)
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.config.experiment_working_directory = str(workdir)
    try:
        experiment.run()
    finally:
        experiment.stop()
    assert strategy.result is not None
    return experiment, strategy.result


@pytest.mark.parametrize(
    ("spec_name", "overrides"),
    [
        ("planted", ["strategy.epochs=6", "strategy.finetune.epochs=2", "strategy.local_search.replicates=1"]),
        (
            "digits",
            [
                "strategy.epochs=2",
                "strategy.finetune.epochs=1",
                "strategy.warmup.epochs=1",
                "strategy.warmup.min_steps=0",
                "dataset.samples=300",
            ],
        ),
    ],
)
def test_nni_experiment_runs_the_same_search_as_dmtg_search(
    spec_name: str, overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # NNI's experiment list (~/nni-experiments) stays out of the home
    spec = dmtg_nas.load_spec(spec_name, overrides)
    expected = run_search(spec)
    experiment, found = _nni_experiment(spec, tmp_path / "nni")
    assert found.groups == expected.groups
    assert found.assignment == expected.assignment
    for split in ("val", "test"):
        for key, value in expected.metrics["totals"][split].items():
            assert found.metrics["totals"][split][key] == pytest.approx(value, rel=1e-5, abs=1e-6)
    assert [s.stage for s in found.stages] == [s.stage for s in expected.stages]
    # NNI's export: the final grouping and the final network
    assert experiment.export_top_models(formatter="dict")[0] == expected.assignment  # type: ignore[attr-defined]
    network = experiment.export_top_models(formatter="instance")[0]  # type: ignore[attr-defined]
    assert network is found.model


def test_dmtg_from_preset_reads_the_preset_and_overrides() -> None:
    from dmtg_nas.nni import DMTG

    strategy = DMTG.from_preset("dmtg", ["epochs=7"])
    assert strategy.config is not None and strategy.config.epochs == 7 and strategy.config.name == "dmtg"
    assert strategy.config.warmup.method == "auto"


def test_without_the_supernet_the_start_goes_to_the_finetune() -> None:
    # strategy.supernet: false (an ablation): the warm start's clusters are the grouping, no supernet trains
    spec = dmtg_nas.load_spec(planted_doc(), ["strategy.supernet=false", "strategy.finetune.epochs=1"])
    result = run_search(spec)
    stages = {s.stage: s for s in result.stages}
    assert list(stages) == ["warm_start", "search", "check"]  # the check's group networks: no fine-tune
    assert stages["search"].groups == stages["warm_start"].groups
    assert result.metrics["search"]["search_seconds"] < 1.0
    assert all(max(row) > 0.9 for row in result.probabilities.values())  # the warm start's rows, as they started
    # from a given start instead: that grouping, unchanged
    doc = planted_doc()
    doc["strategy"].update({"warmup": {"method": "none"}, "local_search": {"enabled": False}, "supernet": False})
    doc["strategy"]["init"] = {"groups": [["t0", "t3"], ["t1", "t2"]]}
    result = run_search(dmtg_nas.load_spec(doc))
    assert sorted(map(sorted, result.groups)) == [["t0", "t3"], ["t1", "t2"]]
