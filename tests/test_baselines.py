"""Each baseline on tiny planted data; TAG's affinity against a hand-computed case; Delta_m."""

from __future__ import annotations

import pytest
import torch

import dmtg_nas
from dmtg_nas.baselines import delta_m, lookahead_affinity, run_method, tag_group_score
from dmtg_nas.components import load_data
from dmtg_nas.config import TaskConfig

from .conftest import planted_doc


@pytest.fixture(scope="module")
def tiny():
    spec = dmtg_nas.load_spec(planted_doc(), ["strategy.epochs=1", "dataset.samples=300"])
    return spec, load_data(spec)


def test_lookahead_affinity_matches_hand_computation() -> None:
    # a linear encoder, two regression heads reading its two outputs
    encoder = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        encoder.weight.copy_(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    heads = [torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)]
    with torch.no_grad():
        heads[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        heads[1].weight.copy_(torch.tensor([[1.0, 1.0]]))
    tasks = [TaskConfig(name="a", type="regression"), TaskConfig(name="b", type="regression")]
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]])
    y = {"a": torch.tensor([0.0, 1.0, 1.0]), "b": torch.tensor([1.0, 0.0, 2.0])}
    lr = 0.1
    z = lookahead_affinity(encoder, heads, tasks, x, y, lr)

    def losses(w: torch.Tensor) -> torch.Tensor:
        f = x @ w.T
        return torch.stack([((f @ h.weight.T).squeeze(1) - y[t]).pow(2).mean() for h, t in zip(heads, "ab")])

    w = encoder.weight.detach().clone().requires_grad_(True)
    base = losses(w)
    expected = torch.zeros(2, 2)
    for i in range(2):
        (g,) = torch.autograd.grad(base[i], w, retain_graph=True)
        expected[i] = 1 - losses(w - lr * g).detach() / base.detach()
    assert torch.allclose(z, expected, atol=1e-6)
    assert z[0, 0] > 0 and z[1, 1] > 0  # a step on a task's own loss lowers it


def test_tag_group_score() -> None:
    a = torch.tensor([[0.0, 0.2, -0.1], [0.4, 0.0, 0.3], [0.0, 0.1, 0.0]])
    assert tag_group_score(a, [1]) == 0.0
    assert tag_group_score(a, [0, 1]) == pytest.approx(0.4 + 0.2)
    assert tag_group_score(a, [0, 1, 2]) == pytest.approx((0.4 + 0.0) / 2 + (0.2 + 0.1) / 2 + (-0.1 + 0.3) / 2)


@pytest.mark.parametrize("method", ["naive", "stl", "random", "tag", "dmtg", "dmtg-retrain", "hoa-pairs"])
def test_methods_return_valid_partitions(tiny, method: str) -> None:
    spec, data = tiny
    result = run_method(method, spec, data, seed=1)
    assert sorted(t for g in result.groups for t in g) == spec.task_names
    assert all(result.groups)
    assert len(result.groups) <= (len(spec.tasks) if method == "stl" else spec.groups)
    assert set(result.metrics["test"]) == set(spec.task_names)
    assert result.total_seconds >= result.decision_seconds >= 0
    # dmtg: the search plus the merge check's group networks; hoa-pairs: 4 singles, 6 pairs, the final network
    checked = result.details.get("local_search", {}).get("networks_trained", 0) if method == "dmtg" else 0
    expected = {"naive": 1, "stl": 4, "random": 1, "tag": 2, "dmtg": 1 + checked, "dmtg-retrain": 2, "hoa-pairs": 11}[
        method
    ]
    assert result.trainings == expected
    if method == "naive":
        assert result.groups == [spec.task_names]
    if method == "stl":
        assert result.groups == [[t] for t in spec.task_names]
    if method == "random":
        assert len(result.groups) == spec.groups


def test_hoa_exhaustive_picks_the_best_partition_of_its_own_networks() -> None:
    spec3 = dmtg_nas.load_spec(
        planted_doc(
            tasks=[{"name": f"t{i}", "type": "regression"} for i in range(3)],
            dataset={"name": "planted", "group_sizes": [2, 1], "input_dim": 8, "latent_dim": 3, "samples": 300},
        ),
        ["strategy.epochs=1"],
    )
    data3 = load_data(spec3)
    result = run_method("hoa", spec3, data3)
    assert result.trainings == 7
    losses = result.details["subset_val_loss"]
    assert set(losses) == {"t0", "t1", "t2", "t0+t1", "t0+t2", "t1+t2", "t0+t1+t2"}
    candidates = {
        (("t0", "t1", "t2"),): losses["t0+t1+t2"],
        (("t0", "t1"), ("t2",)): losses["t0+t1"] + losses["t2"],
        (("t0", "t2"), ("t1",)): losses["t0+t2"] + losses["t1"],
        (("t0",), ("t1", "t2")): losses["t0"] + losses["t1+t2"],
    }
    assert result.details["best_val_loss"] == pytest.approx(min(candidates.values()))
    assert result.metrics["totals"]["val"]["total_loss"] == pytest.approx(result.details["best_val_loss"])
    cover = run_method("hoa-cover", spec3, data3)
    assert cover.rule == "cover" and cover.details["best_val_loss"] <= result.details["best_val_loss"] + 1e-9


def test_seeded_runs_in_one_batch_train_as_separate_runs(tiny) -> None:
    """Several independent trainings in one batched computation: each run's networks get their own
    seed's initialisation and data order, exactly as a separate call with that seed."""
    from dmtg_nas.engine.batched import subset_losses_joint, subset_losses_seeded

    spec, data = tiny

    def with_seed(seed: int):
        return spec.model_copy(update={"strategy": spec.strategy.model_copy(update={"seed": seed})})

    kept: dict = {}
    together = subset_losses_seeded(spec, data, [(3, [0b0011, 0b0110]), (11, [0b0011])], [kept])
    apart = [
        subset_losses_joint(with_seed(3), data, [0b0011, 0b0110]),
        subset_losses_joint(with_seed(11), data, [0b0011]),
    ]
    assert [set(t) for t in together] == [{0b0011, 0b0110}, {0b0011}] and set(kept) == {0b0011, 0b0110}
    for mine, alone in zip(together, apart):
        for mask in alone:
            for split in ("val", "test"):
                for task, row in alone[mask][split].items():
                    assert mine[mask][split][task]["loss"] == pytest.approx(row["loss"], rel=1e-5)
    # the same subset under two seeds is two different trainings
    assert together[0][0b0011]["val"]["t1"]["loss"] != pytest.approx(together[1][0b0011]["val"]["t1"]["loss"], rel=1e-4)


def test_delta_m_sign_and_scale() -> None:
    tasks = [TaskConfig(name="r", type="regression"), TaskConfig(name="c", type="binary")]
    ref = {"r": {"mse": 1.0}, "c": {"accuracy": 0.8}}
    better = {"r": {"mse": 0.9}, "c": {"accuracy": 0.88}}
    assert delta_m(better, ref, tasks) == pytest.approx(100 * (0.1 + 0.1) / 2)
    assert delta_m(ref, ref, tasks) == 0.0


@pytest.mark.parametrize("heads", [{}, {"hidden": [4]}])
def test_stacked_subset_networks_train_as_they_would_alone(tiny, heads: dict) -> None:
    import copy

    from dmtg_nas.engine.batched import subset_losses_joint
    from dmtg_nas.engine.batched import train_stacked as _train_stacked
    from dmtg_nas.engine.stacked import stacked_forward
    from dmtg_nas.engine.train import evaluate, train_network
    from dmtg_nas.nni.space import GroupingSpace

    spec, data = tiny
    spec = spec.model_copy(update={"heads": spec.heads.model_copy(update=heads)})
    subsets = [0b0011, 0b1100, 0b0110]
    nets = [
        GroupingSpace(spec.tasks, 1, spec.backbone, spec.heads, data.input_shape, "independent").freeze(
            {t: 0 for t in spec.task_names}
        )
        for _ in subsets
    ]
    # linear heads: the batched matrix products; a head with a hidden layer: vmap over the networks
    assert (stacked_forward(nets[0]) is None) == bool(heads)
    alone = copy.deepcopy(nets[2])
    joint = dict(zip(subsets, _train_stacked(spec, data, nets, subsets)))
    assert set(joint) == set(subsets) and set(joint[0b0110]["test"]) == {"t1", "t2"}
    # the third network, trained by itself (Lightning, its two tasks only) from the same weights
    tasks = [spec.tasks[1], spec.tasks[2]]
    train_network(alone, data, tasks, spec.strategy, spec.strategy.epochs + spec.strategy.finetune.epochs)
    for split in ("val", "test"):
        own = evaluate(alone, getattr(data, split), tasks)
        for task in ("t1", "t2"):
            assert joint[0b0110][split][task]["loss"] == pytest.approx(own[task]["loss"], rel=1e-4)
    # and the networks did learn different things
    assert joint[0b0011]["val"]["t1"]["loss"] != joint[0b0110]["val"]["t1"]["loss"]
    assert set(subset_losses_joint(spec, data, [0b1])) == {0b1}


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_stacked_forward_computes_what_vmap_of_the_network_computes(norm: str) -> None:
    from torch.func import functional_call, stack_module_state, vmap

    from dmtg_nas.engine.stacked import stacked_forward
    from dmtg_nas.nni.space import GroupingSpace

    doc = planted_doc()
    doc["backbone"] = {"name": "mlp", "hidden": [8, 5], "norm": norm, "activation": "tanh", "dropout": 0.1}
    spec = dmtg_nas.load_spec(doc)
    nets = [
        GroupingSpace(spec.tasks, 1, spec.backbone, spec.heads, (8,), "independent").freeze(
            {t: 0 for t in spec.task_names}
        )
        for _ in range(5)
    ]
    for net in nets:
        net.eval()  # dropout off: the two computations draw different masks
    params, buffers = stack_module_state(nets)  # type: ignore[arg-type]
    forward = stacked_forward(nets[0])
    assert forward is not None

    def one(p: dict, x: torch.Tensor) -> dict:
        return functional_call(nets[0], (p, buffers), (x,))

    shared, own = torch.randn(7, 8), torch.randn(5, 7, 8)  # one batch for all, one batch each
    for x, dims in ((shared, None), (own, 0)):
        expected, got = vmap(one, in_dims=(0, dims))(params, x), forward(params, x)
        assert set(got) == set(spec.task_names)
        for name in spec.task_names:
            assert got[name].shape == expected[name].shape == (5, 7, 1)
            assert torch.allclose(got[name], expected[name], atol=1e-6)
