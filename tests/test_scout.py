"""The polish of a grouping on an affinity, a given starting grouping (``strategy.init.groups``) and
the affinity scout inside the supernet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dmtg_nas
from dmtg_nas.engine.scout import clustering_score, polish_assignment
from dmtg_nas.pipeline import run_search

from .conftest import planted_doc
from .test_warmstart import block_affinity


def test_clustering_score_prefers_the_blocks() -> None:
    a = block_affinity([2, 2, 2])
    truth = [0, 0, 1, 1, 2, 2]
    assert clustering_score(truth, a) > clustering_score([0, 1, 0, 1, 2, 2], a)
    assert clustering_score(truth, a) > clustering_score([0, 0, 0, 0, 1, 1], a)  # two blocks merged
    assert clustering_score(truth, a) > clustering_score([0, 1, 2, 3, 4, 5], a)  # every task alone
    assert clustering_score([0, 1, 2, 3, 4, 5], a) == 0.0
    # the relabelling of the groups does not matter
    assert clustering_score(truth, a) == pytest.approx(clustering_score([2, 2, 0, 0, 1, 1], a))


def test_polish_leaves_the_best_grouping_alone() -> None:
    a = block_affinity([2, 2, 2])
    new, moves = polish_assignment([1, 1, 0, 0, 2, 2], a, 3)
    assert new == [1, 1, 0, 0, 2, 2] and moves == []


def test_polish_moves_swapped_tasks_back() -> None:
    a = block_affinity([2, 2, 2])
    start = [0, 1, 0, 1, 2, 2]  # tasks 1 and 2 swapped
    new, moves = polish_assignment(start, a, 3)
    assert new[0] == new[1] and new[2] == new[3] and new[4] == new[5] and len(set(new)) == 3
    assert 1 <= len(moves) <= 3
    assert all(m["gain"] > 0 for m in moves)
    assert clustering_score(new, a) > clustering_score(start, a)
    # every move is a step of the recorded kind: tasks from one branch to another
    replay = list(start)
    for m in moves:
        assert all(replay[i] == m["from"] for i in m["tasks"])
        for i in m["tasks"]:
            replay[i] = m["to"]
    assert replay == new


def test_polish_uses_an_empty_branch_and_merges_groups() -> None:
    a = block_affinity([2, 2, 2])
    new, moves = polish_assignment([0, 0, 0, 0, 1, 1], a, 3)  # two blocks on one branch, branch 2 empty
    assert new[:2] != new[2:4] and len(set(new)) == 3
    assert moves and moves[0]["to"] == 2
    # a block split over two branches is merged back
    new, moves = polish_assignment([0, 1, 2, 2], block_affinity([2, 2]), 3)
    assert new[0] == new[1] and new[2] == new[3] and new[0] != new[2]


def test_polish_never_lowers_the_score_on_random_affinities() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.random((6, 6))
        start = [int(v) for v in rng.integers(0, 3, size=6)]
        new, _ = polish_assignment(start, a, 3)
        assert clustering_score(new, a) >= clustering_score(start, a) - 1e-12
        again, more = polish_assignment(new, a, 3)  # a fixed point
        assert again == new and more == []
        assert all(0 <= b < 3 for b in new)


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([["t0"], ["t1"], ["t2"]], "3 groups for 2 branches"),
        ([["t0", "t9"]], "names 't9', which is not a task"),
        ([["t0", "t1"], ["t1"]], "lists task 't1' twice"),
    ],
)
def test_init_groups_are_checked(groups: list[list[str]], message: str) -> None:
    doc = planted_doc()
    doc["strategy"]["init"] = {"groups": groups}
    with pytest.raises(dmtg_nas.SpecError, match=message):
        dmtg_nas.load_spec(doc)


def _groups_as_labels(groups: list[list[str]], names: list[str]) -> list[int]:
    label = {t: g for g, group in enumerate(groups) for t in group}
    return [label[n] for n in names]


def _same_partition(a: list[int], b: list[int]) -> bool:
    n = len(a)
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(n) for j in range(n))


def test_init_groups_set_the_start() -> None:
    # no warm start, a strong start and one short epoch: the relaxation keeps it
    doc = planted_doc()
    doc["strategy"].update(
        {
            "init": {"groups": [["t0", "t2"], ["t1", "t3"]], "strength": 8.0},
            "warmup": {"method": "none"},
            "local_search": {"enabled": False},
        }
    )
    spec = dmtg_nas.load_spec(doc, ["strategy.epochs=1"])
    result = run_search(spec)
    assert result.stages[0].stage == "search"
    assert _same_partition(_groups_as_labels(result.stages[0].groups, spec.task_names), [0, 1, 0, 1])
    # every task's probabilities, one epoch after a start of +8 on its given branch, stay there
    assert all(max(row) > 0.9 for row in result.probabilities.values())


def test_polish_on_the_warm_start_affinity_from_a_wrong_start(tmp_path: Path) -> None:
    # the warm start runs (its affinity is the polish's), the supernet starts from a wrong grouping
    # given by init.groups; the polish's grouping is polish_assignment's on that affinity
    doc = planted_doc()
    doc["strategy"].update(
        {
            "init": {"groups": [["t0", "t2"], ["t1", "t3"]], "strength": 8.0},
            "local_search": {"enabled": False},
            "polish": True,
        }
    )
    spec = dmtg_nas.load_spec(doc, ["strategy.epochs=1"])
    run_search(spec, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    names = spec.task_names
    assert [s["stage"] for s in metrics["stages"]] == ["warm_start", "search", "polish", "finetune"]
    relaxed = _groups_as_labels(metrics["polish"]["relaxed"], names)
    assert _same_partition(relaxed, [0, 1, 0, 1])  # the start, kept by one epoch
    expected, moves = polish_assignment(relaxed, np.asarray(metrics["warmup"]["affinity"]), 2)
    final = _groups_as_labels(metrics["stages"][2]["groups"], names)
    assert _same_partition(final, expected)
    assert len(metrics["polish"]["moves"]) == len(moves)
    assert all(set(m["tasks"]) <= set(names) for m in metrics["polish"]["moves"])
    grouping = json.loads((tmp_path / "run" / "grouping.json").read_text())["groups"]
    assert _same_partition(_groups_as_labels(grouping, names), expected)


def test_the_affinity_scout_records_its_affinity_and_clusters(tmp_path: Path) -> None:
    from dmtg_nas.engine.scout import cluster_count, spectral_clusters

    doc = planted_doc()
    doc["strategy"].update(
        {
            "warmup": {"method": "none"},
            "local_search": {"enabled": False},
            "affinity": {"enabled": True, "epochs": 1, "samples": 64},
        }
    )
    spec = dmtg_nas.load_spec(doc, ["strategy.epochs=2"])
    run_search(spec, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [s["stage"] for s in metrics["stages"]] == ["affinity", "search", "finetune"]
    scout = metrics["affinity"]
    a = np.asarray(scout["affinity"])
    assert a.shape == (4, 4) and np.isfinite(a).all()
    assert scout["epochs"] == 1 and scout["samples"] == 64 and scout["seconds"] >= 0
    labels = spectral_clusters(a, cluster_count(a, 2), spec.strategy.seed)
    assert _same_partition(_groups_as_labels(scout["clusters"], spec.task_names), labels)


def test_without_polish_no_polish_record(tmp_path: Path) -> None:
    doc = planted_doc()
    doc["strategy"].update({"warmup": {"method": "none"}, "local_search": {"enabled": False}})
    result = run_search(dmtg_nas.load_spec(doc), tmp_path / "run")
    assert "polish" not in result.metrics and "affinity" not in result.metrics
    assert [s.stage for s in result.stages] == ["search", "finetune"]


def test_the_lookahead_scout_averages_one_measurement_per_step(tmp_path: Path) -> None:
    counts = []
    for every in (1, 2):
        doc = planted_doc()
        doc["strategy"].update(
            {
                "warmup": {"method": "none"},
                "local_search": {"enabled": False},
                "affinity": {"enabled": True, "method": "lookahead", "epochs": 1, "every": every},
            }
        )
        spec = dmtg_nas.load_spec(doc, ["strategy.epochs=2"])
        result = run_search(spec, tmp_path / f"run{every}")
        scout = result.metrics["affinity"]
        assert scout["method"] == "lookahead" and scout["epochs"] == 1
        a = np.asarray(scout["affinity"])
        assert a.shape == (4, 4) and np.isfinite(a).all()
        # a task's own step lowers its own loss: the diagonal is positive
        assert (np.diag(a) > 0).all()
        counts.append(scout["samples"])
    assert counts[0] >= 2 and counts[1] == (counts[0] + 1) // 2


def test_bilevel_logits_learn_from_held_out_batches_only() -> None:
    import pytorch_lightning as pl
    import torch

    seen: dict[str, object] = {}

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: object, *args: object) -> None:
            if seen:
                return
            module = trainer.lightning_module
            bank = module.bank  # type: ignore[attr-defined]
            noise, tau = module.step_state(0)  # type: ignore[attr-defined]
            loss = module.held_out_loss(bank.sample(noise, tau))  # type: ignore[attr-defined]
            weights = [p for p in module.parameters() if p is not bank.logits and p.requires_grad]
            grads = torch.autograd.grad(loss, [bank.logits, *weights], allow_unused=True)
            seen["logits"] = grads[0]
            seen["weights"] = [g for g in grads[1:] if g is not None]
            seen["training"] = module.training_module.training  # type: ignore[attr-defined]

    doc = planted_doc()
    doc["strategy"].update({"warmup": {"method": "none"}, "local_search": {"enabled": False}, "bilevel": True})
    result = run_search(dmtg_nas.load_spec(doc, ["strategy.epochs=2"]), callbacks=[Probe()])
    logits = seen["logits"]
    assert isinstance(logits, torch.Tensor) and torch.isfinite(logits).all() and logits.abs().sum() > 0
    assert seen["weights"] == []  # the held-out loss reaches only the logits
    assert seen["training"] is True  # the network is back in training mode afterwards
    rows = np.asarray(list(result.probabilities.values()))
    assert not np.allclose(rows, 0.5)  # the logits moved, on the held-out batches' gradient


def test_gradient_similarity_of_tasks_that_agree_and_that_oppose() -> None:
    import torch
    from torch import nn

    from dmtg_nas.engine.scout import gradient_similarity
    from dmtg_nas.schema import TaskConfig

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh())
    head = nn.Linear(8, 1)
    other = nn.Linear(8, 1)
    tasks = [TaskConfig(name=n, type="regression") for n in ("a", "b", "c", "d")]
    x = torch.randn(32, 5)
    y = torch.randn(32)
    targets = {"a": y, "b": y.clone(), "c": torch.randn(32)}
    stats = encoder[1].running_mean.clone()
    # a and b: the same target through the same head (identical gradients); d: the same target through
    # a head of the opposite sign with zero bias (the gradient of (-h - y)^2 is that of (h + y)^2)
    with torch.no_grad():
        other.weight.copy_(-head.weight)
        other.bias.zero_()
        head.bias.zero_()
    targets["d"] = -y
    s = gradient_similarity(encoder, [head, head, head, other], tasks, x, targets)
    assert s.shape == (4, 4)
    assert torch.allclose(s.diagonal(), torch.ones(4, dtype=s.dtype))
    assert s[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert s[0, 3] == pytest.approx(1.0, abs=1e-6)  # -h vs -y is h vs y: the same gradient
    assert abs(float(s[0, 2])) < 0.9
    assert torch.allclose(s, s.T)
    assert torch.equal(encoder[1].running_mean, stats)  # batch-norm statistics untouched
    # restricted to the first layer's parameters: the same answer per name
    first = gradient_similarity(encoder, [head] * 4, tasks, x, {**targets, "d": y}, ["0.weight"])
    assert first[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_alignment_energy_is_lowest_with_agreeing_tasks_together() -> None:
    import torch

    from dmtg_nas.nni.oneshot import DMTGLightningModule

    s = torch.tensor([[0.0, 1.0, -1.0, -1.0], [1.0, 0.0, -1.0, -1.0], [-1.0, -1.0, 0.0, 1.0], [-1.0, -1.0, 1.0, 0.0]])
    module = DMTGLightningModule.__new__(DMTGLightningModule)
    module.__dict__["_similarity"] = torch.stack([s, s])  # the same similarity on both branches

    def onehot(labels: list[int]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(labels), 2).float()

    paired = module.alignment_energy(onehot([0, 0, 1, 1]))
    crossed = module.alignment_energy(onehot([0, 1, 0, 1]))
    lumped = module.alignment_energy(onehot([0, 0, 0, 0]))
    assert float(paired) == pytest.approx(-2.0)
    assert float(crossed) == pytest.approx(2.0)
    assert float(lumped) == pytest.approx(2.0)  # 2 pairs that agree, 4 that oppose
    # the gradient on a task's row points to the branch of the tasks it agrees with
    z = torch.full((4, 2), 0.5, requires_grad=True)
    module.alignment_energy(torch.cat([onehot([0, 0, 1, 1])[:3], z[3:]])).backward()
    assert z.grad is not None and z.grad[3, 1] < z.grad[3, 0]


def _swapped_start_doc(alignment: bool) -> dict[str, object]:
    """The tiny planted problem started from its planted partition with one task of each group
    exchanged (+3 on the wrong branch), no warm start, no check."""
    from dmtg_nas.data.planted import planted_partition

    doc = planted_doc()
    doc["dataset"]["samples"] = 800  # type: ignore[index]
    names = [f"t{i}" for i in range(4)]
    g = planted_partition(names, [2, 2], 0)  # the data set's seed
    doc["strategy"].update(  # type: ignore[attr-defined]
        {
            "_base_": "dmtg-plain",
            "init": {"groups": [[g[0][0], g[1][1]], [g[1][0], g[0][1]]], "strength": 3.0},
            "warmup": {"method": "none"},
            "optimizer": {"name": "adam", "lr": 0.01, "logits_lr": 0.05},
            "alignment": {"enabled": alignment, "every": 1},
        }
    )
    return doc


def test_the_alignment_moves_tasks_off_a_wrong_start_that_the_head_losses_keep(tmp_path: Path) -> None:
    found = {}
    for alignment in (False, True):
        doc = _swapped_start_doc(alignment)
        spec = dmtg_nas.load_spec(doc, ["strategy.epochs=6"])
        result = run_search(spec, tmp_path / f"run-{alignment}")
        start = _groups_as_labels(doc["strategy"]["init"]["groups"], spec.task_names)  # type: ignore[index]
        found[alignment] = _same_partition(_groups_as_labels(result.stages[0].groups, spec.task_names), start)
        record = result.metrics.get("alignment")
        if alignment:
            steps = 6 * -(-int(800 * 0.6) // 64)  # epochs x batches of the training split
            assert record is not None and record["measurements"] == steps and record["seconds"] > 0
            s = np.asarray(record["similarity"])
            assert s.shape == (2, 4, 4) and np.isfinite(s).all()
            assert np.allclose(np.diagonal(s, axis1=1, axis2=2), 0.0)  # centred, no self-similarity
        else:
            assert record is None
    assert found == {False: True, True: False}  # the head losses keep the start, the alignment leaves it
