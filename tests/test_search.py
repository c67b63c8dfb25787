"""run_search end to end on tiny planted data: outputs, their schema, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

import dmtg_nas
from dmtg_nas import DmtgError, load_model
from dmtg_nas.pipeline.outputs import adjusted_rand_index

from .conftest import planted_doc


def test_search_writes_every_output(tmp_path: Path) -> None:
    # the one-shot search's own outputs (the merge check's are tested in test_localsearch.py)
    overrides = ["strategy.epochs=3", "strategy.finetune.epochs=1", "strategy.local_search.enabled=false"]
    spec = dmtg_nas.load_spec(planted_doc(), overrides)
    out = tmp_path / "run"
    result = dmtg_nas.search(spec, out, progress=False)

    for name in (
        "grouping.json",
        "metrics.json",
        "history.json",
        "config.yaml",
        "model.pt",
        "probabilities.png",
        "planted_groups.json",
        "checkpoints/last.ckpt",
    ):
        assert (out / name).is_file(), name
    assert (out / "probabilities.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    grouping = json.loads((out / "grouping.json").read_text())
    assert set(grouping) == {"groups", "assignment", "probabilities", "num_branches"}
    assert grouping["num_branches"] == 2
    assert sorted(t for g in grouping["groups"] for t in g) == ["t0", "t1", "t2", "t3"]
    assert all(g for g in grouping["groups"])  # non-empty groups only
    for task, probs in grouping["probabilities"].items():
        assert len(probs) == 2 and sum(probs) == pytest.approx(1.0)
        assert grouping["assignment"][task] == max(range(2), key=lambda k: probs[k])
    for group in grouping["groups"]:
        assert len({grouping["assignment"][t] for t in group}) == 1

    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(metrics[split]) == {"t0", "t1", "t2", "t3"}
        assert all({"loss", "mse", "mae"} <= set(row) for row in metrics[split].values())
        assert metrics["totals"][split]["total_loss"] == pytest.approx(
            sum(row["loss"] for row in metrics[split].values())
        )
    truth = json.loads((out / "planted_groups.json").read_text())["groups"]
    assert metrics["ground_truth"]["adjusted_rand_index"] == pytest.approx(
        adjusted_rand_index(grouping["groups"], truth)
    )

    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    # the warm start puts each task's initial logits at 1 + 3 on its cluster's branch, 1 elsewhere
    clusters = metrics["warmup"]["clusters"]
    warm_branch = {t: i for i, g in enumerate(clusters) for t in g}
    p = math.exp(4) / (math.exp(4) + math.exp(1))
    for task in ("t0", "t1", "t2", "t3"):
        expected = [p, 1 - p] if warm_branch[task] == 0 else [1 - p, p]
        assert history[0]["probabilities"][task] == pytest.approx(expected, rel=1e-5)
    assert len(metrics["warmup"]["affinity"]) == 4
    for task, probs in grouping["probabilities"].items():
        assert history[-1]["probabilities"][task] == pytest.approx(probs)

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["strategy"]["epochs"] == 3 and config["branches"] == 2

    # the saved model is the result's model and reproduces the reported test loss
    model = load_model(out / "model.pt")
    x = result.model  # in-memory
    inputs = torch.randn(7, 8)
    for name, value in model(inputs).items():
        assert torch.allclose(value, x(inputs)[name])


def test_found_test_loss_matches_an_independent_evaluation(tmp_path: Path) -> None:
    from dmtg_nas.components import load_data
    from dmtg_nas.engine.train import evaluate

    spec = dmtg_nas.load_spec(planted_doc())
    result = dmtg_nas.search(spec, None, progress=False)
    test = evaluate(result.model, load_data(spec).test, spec.tasks)
    assert result.metrics["test"]["t2"]["mse"] == pytest.approx(test["t2"]["mse"], rel=1e-6)


def test_same_seed_same_result() -> None:
    spec = dmtg_nas.load_spec(planted_doc())
    a = dmtg_nas.search(spec, None, progress=False)
    b = dmtg_nas.search(spec, None, progress=False)
    assert a.probabilities == b.probabilities
    assert a.metrics["test"] == b.metrics["test"]


def test_plain_strategy_starts_uniform() -> None:
    doc = planted_doc(strategy={"_base_": "dmtg-plain", "epochs": 1, "finetune": {"epochs": 0}})
    result = dmtg_nas.search(dmtg_nas.load_spec(doc), None, progress=False)
    assert "warmup" not in result.metrics
    assert result.history[0]["probabilities"]["t0"] == pytest.approx([0.5, 0.5])


def test_warm_start_recovers_clear_planted_pairs() -> None:
    """Two planted pairs with a generous sample: the warm start's clusters are the planted groups, and
    one search epoch from them keeps them (the merge check is off: its group networks would get one
    epoch too, and it is tested on its own)."""
    strategy = {"_base_": "dmtg", "epochs": 1, "finetune": {"epochs": 0}, "local_search": {"enabled": False}}
    doc = planted_doc(strategy=strategy)
    doc["dataset"].update({"samples": 2000, "input_dim": 32, "latent_dim": 8})
    doc["backbone"] = {"name": "mlp", "hidden": [32, 8]}
    result = dmtg_nas.search(dmtg_nas.load_spec(doc), None, progress=False)
    assert sorted(map(sorted, result.metrics["warmup"]["clusters"])) == sorted(map(sorted, result.ground_truth or []))
    assert result.metrics["ground_truth"]["adjusted_rand_index"] == 1.0


def test_single_branch_is_all_in_one(tmp_path: Path) -> None:
    spec = dmtg_nas.load_spec(planted_doc(groups=1))
    result = dmtg_nas.search(spec, None, progress=False)
    assert result.groups == [["t0", "t1", "t2", "t3"]]
    assert len(result.model.branches) == 1


def test_refuses_non_empty_output_and_resumes_from_checkpoint(tmp_path: Path) -> None:
    spec = dmtg_nas.load_spec(planted_doc())
    out = tmp_path / "run"
    dmtg_nas.search(spec, out, progress=False)
    with pytest.raises(DmtgError, match="already exists and is not empty"):
        dmtg_nas.search(spec, out, progress=False)
    with pytest.raises(DmtgError, match="nothing to resume"):
        dmtg_nas.search(spec, tmp_path / "empty", resume=True, progress=False)
    # a resumed search continues to more epochs from the saved state
    longer = dmtg_nas.load_spec(planted_doc(), ["strategy.epochs=4"])
    resumed = dmtg_nas.search(longer, out, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3, 4]
