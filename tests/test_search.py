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


# ---------------------------------------------------------------------------- stop once decided


def _history(*rows: dict[str, list[float]]) -> list[dict[str, object]]:
    return [{"epoch": e, "probabilities": row} for e, row in enumerate(rows)]


def test_decided_needs_patience_epochs_of_the_same_branches_each_gaining() -> None:
    from dmtg_nas.pipeline.search import decided

    rising = [{"a": [0.8 + 0.02 * e, 0.2 - 0.02 * e], "b": [0.1, 0.9]} for e in range(4)]
    assert not decided(_history(*rising[:3]), patience=3)  # epochs 0-2: one epoch short
    assert decided(_history(*rising), patience=3)
    # a task that changed its most probable branch inside the window
    moved = [*rising[:3], {"a": [0.3, 0.7], "b": [0.1, 0.9]}]
    assert not decided(_history(*moved), patience=3)
    moved_back = [rising[0], {"a": [0.4, 0.6], "b": [0.1, 0.9]}, *rising[2:]]
    assert not decided(_history(*moved_back), patience=3)
    # the same branch, losing ground over the window (a task on its way out)
    losing = [{"a": [0.9 - 0.05 * e, 0.1 + 0.05 * e], "b": [0.1, 0.9]} for e in range(4)]
    assert not decided(_history(*losing), patience=3)
    # about uniform: the top branch not twice the next one
    flat = [{"a": [0.36 + 0.001 * e, 0.34, 0.30 - 0.001 * e]} for e in range(4)]
    assert not decided(_history(*flat), patience=3)
    assert decided(_history(*[{"a": [0.5 + 0.001 * e, 0.25, 0.25 - 0.001 * e]} for e in range(4)]), patience=3)


def test_a_decided_search_stops_and_its_unused_epochs_go_to_the_fine_tune(tmp_path: Path) -> None:
    """From the warm start the grouping is decided at once: the supernet stops after `patience`
    epochs, and the fine-tune gets its own epochs plus the 6 the supernet did not use; without the stop
    the same run trains all 8 (and finds the same groups). A resumed run of the stopped search trains
    the supernet no further: the same history and metrics."""
    doc = planted_doc()
    stop = {"enabled": True, "patience": 2}
    doc["strategy"].update(epochs=8, finetune={"epochs": 1, "enabled": True}, stop_when_decided=stop)
    spec = dmtg_nas.load_spec(doc)
    stopped = dmtg_nas.search(spec, tmp_path / "stopped", progress=False)
    search = stopped.metrics["search"]
    assert (search["decided_epoch"], search["epochs"], search["finetune_epochs"]) == (2, 2, 7)
    assert search["kept"] == {"policy": "last", "epoch": 2}
    assert [r["epoch"] for r in stopped.history] == [0, 1, 2]
    saved = torch.load(tmp_path / "stopped/checkpoints/last.ckpt", weights_only=False)
    assert saved["epoch"] == 1  # the checkpoint of the last epoch trained (epoch index 1 = the second)

    whole = dmtg_nas.load_spec(doc, ["strategy.stop_when_decided.enabled=false"])
    ran = dmtg_nas.search(whole, tmp_path / "whole", progress=False)
    assert ran.metrics["search"]["decided_epoch"] is None
    assert (ran.metrics["search"]["epochs"], ran.metrics["search"]["finetune_epochs"]) == (8, 1)
    assert len(ran.history) == 9
    assert ran.groups == stopped.groups

    from .test_runstate import comparable

    again = dmtg_nas.search(spec, tmp_path / "stopped", resume=True, progress=False)
    assert again.history == stopped.history
    assert comparable(again.metrics) == comparable(stopped.metrics)


def test_a_uniform_start_is_not_decided_at_once() -> None:
    """The method's recipe from uniform logits: the first epochs' probabilities are about uniform, so
    the stop waits (here: all 6 epochs)."""
    doc = planted_doc()
    doc["strategy"] = {
        "_base_": "dmtg-plain",
        "epochs": 6,
        "batch_size": 64,
        "finetune": {"epochs": 0},
        "stop_when_decided": {"enabled": True, "patience": 2},
    }
    result = dmtg_nas.search(dmtg_nas.load_spec(doc), None, progress=False)
    assert result.metrics["search"]["decided_epoch"] is None
    assert result.metrics["search"]["epochs"] == 6
    top = [max(p) for p in result.history[2]["probabilities"].values()]
    assert max(top) < 0.9  # far from decided after two epochs


def test_auto_stops_on_vector_data_and_not_with_batch_norm_images() -> None:
    """`auto` (the dmtg preset's): on where the check's group networks train batched (the planted
    table, an mlp), off for the digits images' batch-norm convnet; true and false as given."""
    from dmtg_nas.components import load_data
    from dmtg_nas.pipeline.search import stops_when_decided

    planted = dmtg_nas.load_spec("planted")
    images = dmtg_nas.load_spec("digits")
    from dmtg_nas.shapes import SHAPES

    table = dmtg_nas.load_spec(SHAPES["digits-table"].document("dmtg", 0))  # the pixels, an mlp
    assert planted.strategy.stop_when_decided.enabled == "auto"
    assert stops_when_decided(planted, load_data(planted))
    assert not stops_when_decided(images, load_data(images))
    assert stops_when_decided(table, load_data(table))
    forced = dmtg_nas.load_spec("digits", ["strategy.stop_when_decided.enabled=true"])
    assert stops_when_decided(forced, load_data(forced))
    off = dmtg_nas.load_spec("planted", ["strategy.stop_when_decided.enabled=false"])
    assert not stops_when_decided(off, load_data(off))


def test_asking_whether_the_check_trains_batched_leaves_the_random_stream_as_it_was() -> None:
    """`auto` builds a probe network to ask; the supernet built after it must get the same weights."""
    from dmtg_nas.components import load_data
    from dmtg_nas.engine.batched import trains_batched

    spec = dmtg_nas.load_spec(planted_doc())
    data = load_data(spec)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert trains_batched(spec, data)
    assert torch.equal(torch.rand(3), expected)


def test_where_the_check_runs_the_stop_changes_the_time_only(tmp_path: Path) -> None:
    """The check's group networks have the strategy's budget whatever the supernet used, and they are
    the final model here: with and without the stop, the same groups and the same test metrics."""
    doc = planted_doc()
    doc["strategy"].update(epochs=8, finetune={"epochs": 1}, stop_when_decided={"enabled": "auto", "patience": 2})
    spec = dmtg_nas.load_spec(doc)
    stopped = dmtg_nas.search(spec, None, progress=False)
    whole = dmtg_nas.search(dmtg_nas.load_spec(doc, ["strategy.stop_when_decided.enabled=false"]), None, progress=False)
    assert stopped.metrics["search"]["decided_epoch"] == 2 and whole.metrics["search"]["decided_epoch"] is None
    finals = {r.metrics["local_search"]["final_model"] for r in (stopped, whole)}
    assert finals == {"group networks"}
    assert stopped.groups == whole.groups
    assert stopped.metrics["test"] == whole.metrics["test"]
