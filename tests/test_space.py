"""The NNI grouping space: simplify, freeze, the grouped network and its file format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from nni.mutable import Categorical

from dmtg_nas import DmtgError, GroupedNetwork, GroupingSpace, load_model
from dmtg_nas.nni.strategy import DMTG


def _space(tiny_spec, k: int = 3, init: str = "independent") -> GroupingSpace:
    torch.manual_seed(0)
    return GroupingSpace(tiny_spec.tasks, k, tiny_spec.backbone, tiny_spec.heads, (8,), init)


def test_simplify_lists_one_categorical_per_task(tiny_spec) -> None:
    space = _space(tiny_spec, k=3)
    choices = space.simplify()
    assert list(choices) == ["t0", "t1", "t2", "t3"]
    for label, choice in choices.items():
        assert isinstance(choice, Categorical)
        assert list(choice.values) == [0, 1, 2]
        assert choice.label == label
    assert len(space.branches) == 3
    assert len(space.routers.task_names) * space.routers.num_branches == 12  # K*N heads
    assert (
        space.head_banks is not None
        and [tuple(b.weight.shape) for b in space.head_banks] == [(4, space.features.width)] * 3
    )


def test_copy_init_makes_branches_identical(tiny_spec) -> None:
    space = _space(tiny_spec, k=2, init="copy")
    a, b = (dict(br.named_parameters()) for br in space.branches)
    assert all(torch.equal(a[n], b[n]) for n in a)
    space = _space(tiny_spec, k=2, init="independent")
    a, b = (dict(br.named_parameters()) for br in space.branches)
    assert not all(torch.equal(a[n], b[n]) for n in a)


def test_freeze_keeps_used_branches_and_weights(tiny_spec) -> None:
    space = _space(tiny_spec, k=3)
    sample = {"t0": 2, "t1": 0, "t2": 2, "t3": 2}
    net = space.freeze(sample)
    assert isinstance(net, GroupedNetwork)
    assert len(net.branches) == 2 and net.branch_ids == [0, 2]
    assert len(net.heads) == 4
    assert net.groups == [["t1"], ["t0", "t2", "t3"]]
    x = torch.randn(5, 8)
    out = net(x)
    with torch.no_grad():
        for name in ["t0", "t1", "t2", "t3"]:
            k = sample[name]
            expected = space.routers.head(int(name[1]), k)(space.branches[k](x))
            assert torch.allclose(out[name], expected)
    # the frozen network is independent of the space
    with torch.no_grad():
        space.branches[2][0].weight.add_(1.0)  # type: ignore[index]
    assert torch.allclose(net(x)["t0"], out["t0"])


def test_freeze_rejects_invalid_samples(tiny_spec) -> None:
    space = _space(tiny_spec, k=2)
    with pytest.raises(DmtgError, match="invalid grouping sample"):
        space.freeze({"t0": 5, "t1": 0, "t2": 0, "t3": 0})


def test_supernet_freeze_matches_space_freeze(tiny_spec) -> None:
    space = _space(tiny_spec, k=2)
    sample = {"t0": 1, "t1": 1, "t2": 0, "t3": 1}
    x = torch.randn(4, 8)
    before = space.freeze(sample)(x)
    DMTG().mutate_model(space)  # turn into the supernet in place
    assert list(space.simplify()) == ["t0", "t1", "t2", "t3"]
    after = space.freeze(sample)(x)
    for name in before:
        assert torch.allclose(before[name], after[name])


def test_save_load_round_trip_without_nni(tiny_spec, tmp_path: Path) -> None:
    net = _space(tiny_spec, k=3).freeze({"t0": 0, "t1": 1, "t2": 1, "t3": 0})
    net.save(tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    x = torch.randn(6, 8)
    for name, value in net(x).items():
        assert torch.equal(value, loaded(x)[name])
    assert loaded.assignment == net.assignment and loaded.branch_ids == net.branch_ids


def test_load_model_refuses_other_files(tmp_path: Path) -> None:
    torch.save({"something": 1}, tmp_path / "x.pt")
    with pytest.raises(DmtgError, match="not a dmtg-nas grouped-network file"):
        load_model(tmp_path / "x.pt")
    (tmp_path / "y.pt").write_bytes(b"garbage")
    with pytest.raises(DmtgError, match="not a readable"):
        load_model(tmp_path / "y.pt")


def test_freeze_reuse_hands_over_the_modules(tiny_spec) -> None:
    sample = {"t0": 1, "t1": 1, "t2": 0, "t3": 1}
    space = _space(tiny_spec, k=2)
    copied, reused = space.freeze(sample), space.freeze(sample, reuse=True)
    assert copied.state_dict().keys() == reused.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(), reused.state_dict().values()))
    # reuse: the space's own branch modules, no copies; the default: copies
    assert reused.branches[0] is space.branches[0] and reused.branches[1] is space.branches[1]
    assert copied.branches[0] is not space.branches[0]
    own = {id(p) for p in space.parameters()}
    assert own.isdisjoint(id(p) for p in copied.parameters())
    assert {id(p) for p in reused.branches.parameters()} <= own
