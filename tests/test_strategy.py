"""The DMTG strategy: the loss of one step, gradients, temperature, noise and export."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dmtg_nas.config import TemperatureConfig
from dmtg_nas.engine.losses import head_losses
from dmtg_nas.engine.module import ARCH_PARAM_FLAG, MultiTaskModule
from dmtg_nas.nni.router import RouterBank, gumbel_noise
from dmtg_nas.nni.space import GroupingSpace
from dmtg_nas.nni.strategy import DMTG
from dmtg_nas.schedules import TemperatureSchedule

from .conftest import ROOT, planted_doc


def _supernet(spec, k: int = 3, **strategy_kwargs):
    torch.manual_seed(0)
    space = GroupingSpace(spec.tasks, k, spec.backbone, spec.heads, (8,), "independent")
    strategy = DMTG(**strategy_kwargs)
    strategy.mutate_model(space)
    return space, space.routers


def test_mutation_replaces_the_routers_with_one_bank_of_logits(tiny_spec) -> None:
    space, bank = _supernet(tiny_spec, logits_init=0.5, initial_logits={"t2": [0.0, 3.0, 1.0]})
    assert isinstance(bank, RouterBank) and bank.task_names == ["t0", "t1", "t2", "t3"]
    table = bank.logits
    assert getattr(table, ARCH_PARAM_FLAG) and table.shape == (4, 3)
    assert bank.arch_parameters() == [table]
    want = [[0.5] * 3, [0.5] * 3, [0.0, 3.0, 1.0], [0.5] * 3]
    assert torch.equal(table.detach(), torch.tensor(want))
    # one table for all tasks, registered once (in the bank), and in the checkpointed state
    assert [name for name, p in space.named_parameters() if p is table] == ["routers.logits"]
    assert [k for k in space.state_dict() if "logits" in k] == ["routers.logits"]
    # the bank holds the space's heads: the same parameters under the same names
    assert [k for k in space.state_dict() if "banks" in k] == [
        f"routers.banks.{k}.{w}" for k in range(3) for w in ("weight", "bias")
    ]
    with pytest.raises(ValueError, match="initial logits of 't1' have 2 values for 3 branches"):
        _supernet(tiny_spec, initial_logits={"t1": [0.0, 1.0]})


def test_one_step_loss_is_the_sample_weighted_sum_of_all_head_losses() -> None:
    import dmtg_nas

    spec = dmtg_nas.load_spec(
        planted_doc(
            tasks=[
                {"name": "t0", "type": "regression", "weight": 2.0},
                {"name": "t1", "type": "binary"},
                {"name": "t2", "type": "multiclass", "num_classes": 3},
                {"name": "t3", "type": "regression"},
            ]
        )
    )
    space, bank = _supernet(spec, k=3)
    with torch.no_grad():
        for i in range(4):
            bank.logits[i] = torch.tensor([0.3 * i, -0.2, 0.5])
    tau, noise = 1.7, gumbel_noise(seed=3, step=11, shape=(4, 3))
    x = torch.randn(10, 8)
    y = {
        "t0": torch.randn(10),
        "t1": torch.randint(0, 2, (10,)).float(),
        "t2": torch.randint(0, 3, (10,)),
        "t3": torch.randn(10),
    }
    space.train()
    z = bank.sample(noise, torch.tensor(tau))
    total, _ = bank.loss(z, head_losses(spec.tasks, space(x), y), spec.tasks)

    # by hand: z = softmax((S + g) / tau); sum_i w_i sum_k z_ik L_i(head_ki(branch_k(x)), y_i)
    with torch.no_grad():
        feats = [b(x) for b in space.branches]
        expected = 0.0
        for i, task in enumerate(spec.tasks):
            zi = torch.exp((bank.logits[i] + noise[i]) / tau)
            zi = zi / zi.sum()
            for k in range(3):
                out = bank.head(i, k)(feats[k])
                if task.type == "regression":
                    loss = F.mse_loss(out.squeeze(1), y[task.name])
                elif task.type == "binary":
                    loss = F.binary_cross_entropy_with_logits(out.squeeze(1), y[task.name])
                else:
                    loss = F.cross_entropy(out, y[task.name])
                expected += task.weight * float(zi[k]) * float(loss)
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)

    total.backward()
    assert bank.logits.grad is not None and torch.all(bank.logits.grad.abs() > 0)
    for b in space.branches:
        assert all(p.grad is not None for p in b.parameters())


def test_eval_mode_uses_the_argmax_head_only(tiny_spec) -> None:
    space, bank = _supernet(tiny_spec, k=3)
    with torch.no_grad():
        bank.logits[0] = torch.tensor([0.0, 2.0, 1.0])
    space.eval()
    out = space(torch.randn(3, 8))
    assert int(out.choice[0]) == 1
    assert torch.equal(out.selected()["t0"], out.preds(0)[1])


def test_hard_samples_are_one_hot_with_soft_gradients(tiny_spec) -> None:
    _space, bank = _supernet(tiny_spec, k=3, sample="hard")
    noise = torch.zeros(4, 3)
    noise[0] = torch.tensor([0.0, 0.5, 0.0])
    z = bank.sample(noise, torch.tensor(1.0), hard=True)
    assert sorted(z[0].tolist()) == [0.0, 0.0, 1.0] and all(sorted(row) == [0.0, 0.0, 1.0] for row in z.tolist())
    (z[0] * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    grad = bank.logits.grad
    assert grad is not None and grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0


def test_export_is_argmax_and_probs_are_softmax(tiny_spec) -> None:
    _space, bank = _supernet(tiny_spec, k=3)
    logits = [[0, 1, 2], [3, 1, 0], [0, 5, 0], [1, 1, 1.5]]
    with torch.no_grad():
        bank.logits.copy_(torch.tensor(logits, dtype=torch.float))
    assert bank.export({}) == {"t0": 2, "t1": 0, "t2": 1, "t3": 2}
    assert bank.export({"t1": 1}) == {"t0": 2, "t2": 1, "t3": 2}  # labels already decided are left alone
    probs = bank.export_probs({})["t1"]
    expected = torch.softmax(torch.tensor([3.0, 1.0, 0.0]), 0)
    assert [probs[k] for k in range(3)] == pytest.approx(expected.tolist())


def test_gumbel_noise_is_deterministic_per_step() -> None:
    a = gumbel_noise(0, 5, (4, 3))
    assert torch.equal(a, gumbel_noise(0, 5, (4, 3)))
    assert not torch.equal(a, gumbel_noise(0, 6, (4, 3)))
    assert not torch.equal(a, gumbel_noise(1, 5, (4, 3)))
    big = gumbel_noise(0, 0, (20000,))
    assert float(big.mean()) == pytest.approx(0.5772, abs=0.03)  # Euler-Mascheroni


@pytest.mark.parametrize(
    ("schedule", "mid"),
    [("constant", 4.0), ("linear", 2.5), ("exponential", 2.0), ("cosine", 2.5)],
)
def test_temperature_schedules(schedule: str, mid: float) -> None:
    s = TemperatureSchedule(TemperatureConfig(schedule=schedule, init=4.0, final=1.0))
    assert s(0, 101) == pytest.approx(4.0)
    assert s(50, 101) == pytest.approx(mid)
    assert s(100, 101) == pytest.approx(4.0 if schedule == "constant" else 1.0)
    values = [s(i, 101) for i in range(101)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(values))  # never increases
    assert not any(math.isnan(v) for v in values)


def test_logits_share_the_optimizer_with_their_own_group(tiny_spec) -> None:
    space, bank = _supernet(tiny_spec, k=2)
    opt_cfg = tiny_spec.strategy.optimizer.model_copy(update={"lr": 0.01, "logits_lr": 0.1, "weight_decay": 0.001})
    module = MultiTaskModule(tiny_spec.tasks, opt_cfg, tiny_spec.strategy.lr_schedule, 3)
    module.set_model(space)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    weights, arch = optimizer.param_groups
    assert [id(p) for p in arch["params"]] == [id(bank.logits)]
    assert (arch["lr"], arch["weight_decay"]) == (0.1, 0.0)
    assert (weights["lr"], weights["weight_decay"]) == (0.01, 0.001)
    n_params = sum(1 for _ in space.parameters())
    assert len(weights["params"]) + len(arch["params"]) == n_params


def test_the_ablation_strategy_files_load_and_differ_from_their_base_as_they_say() -> None:
    from dmtg_nas.config import load_strategy

    folder = ROOT / "benchmarks" / "strategies"
    loaded = {path.stem: load_strategy(path) for path in sorted(folder.glob("*.yaml"))}
    assert {
        "plain-align",
        "align-check",
        "warm-align",
        "plain-bilevel",
        "warm-check",
        "warm-always",
        "oneshot-polish",
        "no-swaps",
        "no-stop",
        "oneshot-no-stop",
        "finetune-always",
    } <= set(loaded)
    for name, strategy in loaded.items():
        assert strategy.name == name
    assert loaded["plain-align"].alignment.enabled and loaded["plain-align"].warmup.method == "none"
    assert loaded["plain-align"].local_search.enabled is False
    assert loaded["align-check"].alignment.enabled and loaded["align-check"].local_search.enabled == "auto"
    assert loaded["align-check"].local_search.group_splits and loaded["align-check"].local_search.moves
    assert not load_strategy("dmtg").local_search.group_splits  # measured: no gain from the warm start
    assert loaded["warm-align"].alignment.enabled and loaded["warm-align"].warmup.method == "auto"
    for name in ("plain-align", "align-check", "warm-align"):
        assert loaded[name].optimizer.logits_lr == 0.03
        assert loaded[name].alignment.drive == "alignment"
    assert not load_strategy("dmtg").alignment.enabled  # the default keeps the head losses' drive
    # the merge check without swaps: otherwise the default, which has them
    no_swaps, default = loaded["no-swaps"].model_dump(), load_strategy("dmtg").model_dump()
    assert default["local_search"]["swaps"] and not no_swaps["local_search"]["swaps"]
    for config in (no_swaps, default):
        config.pop("name"), config.pop("description"), config["local_search"].pop("swaps")
    assert no_swaps == default
    # the warm start on every encoder: otherwise the default, whose warm start is auto
    always, default = loaded["warm-always"].model_dump(), load_strategy("dmtg").model_dump()
    assert default["warmup"]["method"] == "auto" and always["warmup"]["method"] == "attribution"
    for config in (always, default):
        config.pop("name"), config.pop("description"), config["warmup"].pop("method")
    assert always == default
    # the supernet's stop once decided off: otherwise dmtg and dmtg-oneshot; the measured ablations
    # that drive the logits by alignment keep the supernet's whole training, as measured
    for name, base in (("no-stop", "dmtg"), ("oneshot-no-stop", "dmtg-oneshot")):
        ablation, preset = loaded[name].model_dump(), load_strategy(base).model_dump()
        assert preset["stop_when_decided"]["enabled"] == "auto" and not ablation["stop_when_decided"]["enabled"]
        for config in (ablation, preset):
            config.pop("name"), config.pop("description"), config.pop("stop_when_decided")
        assert ablation == preset
    # the fine-tune also before the merge check: otherwise the default, which leaves it out there
    always, preset = loaded["finetune-always"].model_dump(), load_strategy("dmtg").model_dump()
    assert (always["finetune"].pop("enabled"), preset["finetune"].pop("enabled")) == (True, "auto")
    for config in (always, preset):
        config.pop("name"), config.pop("description")
    assert always == preset
    for name in ("align-check", "warm-align"):
        assert loaded[name].stop_when_decided.enabled is False
    for preset_name in ("dmtg-plain", "paper-celeba", "paper-taskonomy", "annealed"):
        assert load_strategy(preset_name).stop_when_decided.enabled is False  # the recipes as they are
    for preset_name in ("dmtg-plain", "paper-celeba", "paper-taskonomy"):
        assert load_strategy(preset_name).finetune.enabled is True
