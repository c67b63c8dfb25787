"""The reference code's recipe details as options: the plateau schedule on the training loss (with
min_lr and threshold), keeping the best validation epoch, xavier initialisation, and the shipped
paper presets and real-data spaces that use them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import dmtg_nas
from dmtg_nas import SpecError, load_spec, load_strategy
from dmtg_nas.engine.module import BestEpoch, MultiTaskModule
from dmtg_nas.engine.networks import init_weights, plain_network
from dmtg_nas.nni.space import GroupingSpace
from dmtg_nas.schema import LRScheduleConfig, OptimizerConfig, TaskConfig

from .conftest import planted_doc

# ------------------------------------------------------------------------------------------------
# plateau on the training loss
# ------------------------------------------------------------------------------------------------


def _plateau(**options) -> tuple[torch.optim.Optimizer, dict]:
    module = MultiTaskModule(
        [TaskConfig(name="t", type="regression")],
        OptimizerConfig(lr=1e-3),
        LRScheduleConfig(name="plateau", **options),
        10,
    )
    module.set_model(nn.Linear(2, 1))
    configured = module.configure_optimizers()
    return configured["optimizer"], configured["lr_scheduler"]


def test_plateau_watches_the_configured_loss_with_min_lr_and_threshold() -> None:
    opt, sched = _plateau(monitor="train_loss", min_lr=3e-5, threshold=0.1, patience=0, factor=0.5)
    assert sched["monitor"] == "train_loss"
    plateau = sched["scheduler"]
    assert (plateau.threshold, plateau.min_lrs[0], plateau.factor) == (0.1, 3e-5, 0.5)
    plateau.step(1.0)
    plateau.step(0.95)  # 5% lower: not below 1.0 * (1 - 0.1), a plateau -> halved
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    plateau.step(0.80)  # 20% lower than the best (1.0): an improvement, kept
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    for _ in range(10):
        plateau.step(0.80)
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-5)  # never below min_lr
    _, default = _plateau()
    assert default["monitor"] == "val_loss" and default["scheduler"].threshold == 1e-4


def test_a_search_with_plateau_on_the_training_loss_needs_no_validation() -> None:
    spec = load_spec(
        planted_doc(),
        [
            "strategy.lr_schedule={name: plateau, monitor: train_loss, patience: 0, factor: 0.5, threshold: 0.5}",
            "strategy.warmup.method=none",
            "strategy.local_search.enabled=false",
            "strategy.epochs=3",
        ],
    )
    assert not spec.strategy.validates
    result = dmtg_nas.search(spec, None, progress=False)
    # no validation ran during the search: the history has no val_loss
    assert all(r["val_loss"] is None for r in result.history)
    assert sorted(t for g in result.groups for t in g) == spec.task_names


# ------------------------------------------------------------------------------------------------
# keep: best
# ------------------------------------------------------------------------------------------------


def test_keep_best_returns_the_supernet_of_the_best_validation_epoch(tmp_path: Path) -> None:
    # a learning rate this high makes the validation loss jump about: the best epoch is not the last
    overrides = [
        "strategy.keep=best",
        "strategy.warmup.method=none",
        "strategy.local_search.enabled=false",
        "strategy.epochs=6",
        "strategy.optimizer.lr=1.0",
        "strategy.temperature.init=0.5",
    ]
    spec = load_spec(planted_doc(), overrides)
    assert spec.strategy.validates
    result = dmtg_nas.search(spec, tmp_path / "best", progress=False)
    records = [r for r in result.history if r["val_loss"] is not None]
    best = min(records, key=lambda r: r["val_loss"])
    kept = result.metrics["search"]["kept"]
    assert kept == {
        "policy": "best",
        "monitor": "val_loss",
        "epoch": best["epoch"],
        "value": pytest.approx(best["val_loss"]),
    }
    assert best["epoch"] != records[-1]["epoch"], "the fixture should make the last epoch not the best"
    # the grouping's probabilities are the best epoch's, not the last one's
    grouping = json.loads((tmp_path / "best" / "grouping.json").read_text())
    for task, probs in grouping["probabilities"].items():
        assert probs == pytest.approx(best["probabilities"][task])
        assert probs != pytest.approx(records[-1]["probabilities"][task])
    # the snapshot travels in the search's checkpoint (a resumed run keeps it)
    ckpt = torch.load(tmp_path / "best" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    saved = next(v for k, v in ckpt["callbacks"].items() if k.startswith("BestEpoch"))
    assert saved["epoch"] == best["epoch"] and saved["state"].keys() == ckpt["state_dict"].keys()
    last = dmtg_nas.search(load_spec(planted_doc(), [*overrides[1:]]), None, progress=False)
    assert last.metrics["search"]["kept"] == {"policy": "last", "epoch": 6}


def test_keep_best_watches_the_total_error_of_classification_tasks() -> None:
    binary = [TaskConfig(name="a", type="binary"), TaskConfig(name="b", type="multiclass", num_classes=3)]
    assert BestEpoch.monitor_for(binary) == "val_total_error"
    assert BestEpoch.monitor_for([*binary, TaskConfig(name="c", type="regression")]) == "val_loss"


def test_best_epoch_state_round_trips_through_a_checkpoint() -> None:
    keep = BestEpoch("val_loss")
    keep.best, keep.epoch, keep.state = 0.5, 3, {"w": torch.ones(2)}
    other = BestEpoch("val_loss")
    other.load_state_dict(keep.state_dict())
    assert (other.best, other.epoch) == (0.5, 3) and torch.equal(other.state["w"], torch.ones(2))  # type: ignore[index]


# ------------------------------------------------------------------------------------------------
# xavier initialisation
# ------------------------------------------------------------------------------------------------


def _xavier_bound(weight: torch.Tensor) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return (6.0 / (fan_in + fan_out)) ** 0.5


def test_xavier_draws_uniform_weights_within_the_bound_and_zero_biases() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64), nn.Flatten(), nn.Linear(64, 200))
    before_bn = net[1].weight.clone()
    init_weights(net, "xavier")
    for layer in (net[0], net[3]):
        bound = _xavier_bound(layer.weight)
        largest = float(layer.weight.detach().abs().max())
        assert 0.9 * bound < largest <= bound  # uniform over the whole range
        assert torch.all(layer.bias == 0)
    assert torch.equal(net[1].weight, before_bn)  # normalisation layers keep theirs
    same = nn.Linear(4, 4)
    copy = same.weight.clone()
    init_weights(same, "default")
    assert torch.equal(same.weight, copy)


def test_strategy_init_weights_reaches_the_supernet_and_the_plain_networks() -> None:
    spec = load_spec(planted_doc(), ["strategy.init.weights=xavier"])
    space = GroupingSpace.from_spec(spec, (8,))
    linears = [m for m in space.modules() if isinstance(m, nn.Linear)]
    assert linears and all(torch.all(m.bias == 0) for m in linears)
    # the head bank (built from the heads) starts at zero biases too, and the K copies stay identical
    banks = space.head_banks
    assert banks is not None and all(torch.all(b.bias == 0) for b in banks)
    assert torch.equal(space.branches[0][0].weight, space.branches[1][0].weight)
    net = plain_network(
        spec.tasks, spec.backbone, spec.heads, (8,), {"t0": 0, "t1": 1, "t2": 0, "t3": 1}, weights="xavier"
    )
    assert all(torch.all(m.bias == 0) for m in net.modules() if isinstance(m, nn.Linear))
    default = GroupingSpace.from_spec(load_spec(planted_doc()), (8,))
    assert any(bool(torch.any(m.bias != 0)) for m in default.modules() if isinstance(m, nn.Linear))


# ------------------------------------------------------------------------------------------------
# the shipped presets
# ------------------------------------------------------------------------------------------------


def test_paper_taskonomy_is_the_public_codes_recipe() -> None:
    s = load_strategy("paper-taskonomy")
    assert (s.optimizer.name, s.optimizer.lr, s.epochs, s.batch_size) == ("adam", 1e-3, 100, 48)
    sched = s.lr_schedule
    assert (sched.name, sched.monitor, sched.factor, sched.patience) == ("plateau", "train_loss", 0.5, 3)
    assert (sched.min_lr, sched.threshold) == (3e-5, 0.1)
    assert (s.temperature.schedule, s.temperature.init, s.keep) == ("constant", 4.0, "best")
    assert s.validates  # keep: best validates every epoch (the plateau itself reads the training loss)


def test_paper_celeba_is_the_public_codes_recipe() -> None:
    s = load_strategy("paper-celeba")
    assert (s.optimizer.lr, s.epochs, s.batch_size, s.temperature.init) == (8e-4, 100, 256, 2.5)
    assert (s.lr_schedule.name, s.lr_schedule.step_size, s.lr_schedule.gamma) == ("step", 15, 0.5)
    assert (s.init.weights, s.keep, s.init.branches, s.init.logits) == ("xavier", "best", "copy", 1.0)
    assert (s.warmup.method, s.finetune.epochs, s.local_search.enabled) == ("none", 0, False)


def test_option_errors_name_the_key() -> None:
    for override, key in (
        ("strategy.keep=first", "strategy.keep"),
        ("strategy.init.weights=kaiming", "strategy.init.weights"),
        ("strategy.lr_schedule.monitor=loss", "strategy.lr_schedule.monitor"),
        ("strategy.lr_schedule.threshold=1.5", "strategy.lr_schedule.threshold"),
        ("strategy.lr_schedule.min_lr=-1.0", "strategy.lr_schedule.min_lr"),
    ):
        with pytest.raises(SpecError) as info:
            load_spec(planted_doc(), [override])
        assert info.value.key == key, override
