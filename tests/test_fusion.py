"""The fast paths of a training step give the same numbers as the plain ones: heads of a branch as one
matrix product, one loss call for the heads of all tasks that share a loss, the fused/foreach optimizers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import dmtg_nas.network as network_module
import dmtg_nas.nni.router as router_module
import dmtg_nas.nni.space as space_module
from dmtg_nas.config import BackboneConfig, HeadsConfig, OptimizerConfig, TaskConfig
from dmtg_nas.engine.losses import HeadOutputs, head_losses, multitask_loss
from dmtg_nas.engine.module import make_optimizer
from dmtg_nas.network import apply_heads, load_model
from dmtg_nas.network import plain_linear as _plain_linear
from dmtg_nas.nni.router import RouterBank, gumbel_noise
from dmtg_nas.nni.space import GroupingSpace
from dmtg_nas.nni.strategy import DMTG
from dmtg_nas.tasks import squeeze_output, task_loss

TASKS = [
    TaskConfig(name="bin", type="binary"),
    TaskConfig(name="reg", type="regression"),
    TaskConfig(name="cls", type="multiclass", num_classes=3),
    TaskConfig(name="l1", type="regression", loss="l1"),
]


def _per_head(heads: Any, x: Any) -> list[Tensor]:
    return [head(x) for head in heads]


Routed = tuple[list[Tensor], Tensor]  # a task's K predictions and its K sample weights


def _loop_loss(task: TaskConfig, out: Routed, y: Tensor) -> Tensor:
    """The loss as K separate task_loss calls (the reference)."""
    preds, weights = out
    terms = [weights[k] * task_loss(task, squeeze_output(task, p), y) for k, p in enumerate(preds)]
    return torch.stack(terms).sum()


def _reference_loss(
    tasks: list[TaskConfig], outputs: dict[str, Routed], targets: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """The method's loss with one task_loss call per head and task (the reference)."""
    parts = {t.name: _loop_loss(t, outputs[t.name], targets[t.name]) for t in tasks}
    return torch.stack([t.weight * parts[t.name] for t in tasks]).sum(), parts


def _method_loss(
    tasks: list[TaskConfig], outputs: dict[str, Routed], targets: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """The router bank's loss from per-task predictions and sample weights (its batched calls)."""
    heads = HeadOutputs(
        [t.name for t in tasks], torch.zeros(len(tasks), dtype=torch.long), per_task=[outputs[t.name][0] for t in tasks]
    )
    z = torch.stack([outputs[t.name][1] for t in tasks])
    return RouterBank.loss(z, head_losses(tasks, heads, targets), tasks)


def _supernet_loss(model: nn.Module, out: Any, targets: dict[str, Tensor]) -> Tensor:
    """One step's loss: the method's for a supernet (this step's noise, tau 2), else multitask_loss."""
    if not isinstance(out, HeadOutputs):
        return multitask_loss(TASKS, out, targets)[0]
    bank = model.routers
    z = bank.sample(gumbel_noise(0, 3, tuple(bank.logits.shape)), torch.tensor(2.0))
    return bank.loss(z, head_losses(TASKS, out, targets), TASKS)[0]


def _reference_plain_loss(
    tasks: list[TaskConfig], outputs: dict[str, Tensor], targets: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    parts = {t.name: task_loss(t, squeeze_output(t, outputs[t.name]), targets[t.name]) for t in tasks}
    return torch.stack([t.weight * parts[t.name] for t in tasks]).sum(), parts


def _routed_inputs(task: TaskConfig, k: int, gen: torch.Generator) -> tuple[list[Tensor], Tensor]:
    preds = [torch.randn(7, task.out_features, generator=gen, requires_grad=True) for _ in range(k)]
    return preds, torch.randn(k, generator=gen, requires_grad=True)


def _target(task: TaskConfig, gen: torch.Generator) -> Tensor:
    if task.type == "binary":
        return torch.randint(0, 2, (7,), generator=gen).float()
    if task.type == "multiclass":
        return torch.randint(0, task.out_features, (7,), generator=gen)
    return torch.randn(7, generator=gen)


def _loss_and_grads(
    fn: Callable[..., tuple[Tensor, dict[str, Tensor]]],
    tasks: list[TaskConfig],
    outputs: dict[str, Any],
    targets: dict[str, Tensor],
    leaves: list[Tensor],
) -> list[Tensor]:
    """The total, each task's part and the gradients of the total in ``leaves``."""
    total, parts = fn(tasks, outputs, targets)
    grads = torch.autograd.grad(total, leaves, retain_graph=True)  # the sample weights' graph is shared
    return [total.detach(), *(parts[t.name].detach() for t in tasks), *grads]


def _targets(batch: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "bin": torch.randint(0, 2, (batch,), generator=gen).float(),
        "reg": torch.randn(batch, generator=gen),
        "cls": torch.randint(0, 3, (batch,), generator=gen),
        "l1": torch.randn(batch, generator=gen),
    }


def _space(k: int, heads: HeadsConfig | None = None, fuse: bool = True) -> GroupingSpace:
    torch.manual_seed(0)
    backbone = BackboneConfig.model_validate({"name": "mlp", "hidden": [16]})
    return GroupingSpace(TASKS, k, backbone, heads or HeadsConfig(), (8,), branch_init="independent", fuse_heads=fuse)


def _supernet(k: int, heads: HeadsConfig | None = None, fuse: bool = True) -> nn.Module:
    return DMTG(2.0).mutate_model(_space(k, heads, fuse)).train()


def _per_head_everywhere(patch: pytest.MonkeyPatch) -> None:
    for module in (space_module, router_module, network_module):
        patch.setattr(module, "apply_heads", _per_head)


def _run(model: nn.Module, monkeypatch: pytest.MonkeyPatch, fused: bool) -> tuple[Any, Tensor, dict[str, Tensor]]:
    """Outputs, loss and gradients of one step with the fused heads on or off (gradients of a head
    bank's rows under the names of the per-head parameters they stand for)."""
    with monkeypatch.context() as patch:
        if not fused:
            _per_head_everywhere(patch)
        model.zero_grad(set_to_none=True)
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
        out = model(x)
        total = _supernet_loss(model, out, _targets(6))
        total.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    banks = getattr(model, "head_banks", None)
    for k, bank in enumerate(banks if banks is not None else []):
        for kind in ("weight", "bias"):
            if f"routers.banks.{k}.{kind}" not in grads:  # a branch no task used
                continue
            rows = grads.pop(f"routers.banks.{k}.{kind}").split(bank.sizes)
            for i, part in enumerate(rows):
                grads[f"routers.heads.{i}.{k}{'.0' if bank.wrapped[i] else ''}.{kind}"] = part
    return out, total.detach(), grads


def _outputs(out: Any) -> dict[str, Any]:
    """``{task: prediction}``, or ``{task: its K predictions}`` of a supernet's outputs."""
    if isinstance(out, HeadOutputs):
        return {name: out.preds(i) for i, name in enumerate(out.task_names)}
    return dict(out)


def _assert_same(a: tuple[Any, Tensor, dict[str, Tensor]], b: tuple[Any, Tensor, dict[str, Tensor]]) -> None:
    out_a, loss_a, grads_a = a
    out_b, loss_b, grads_b = b
    if isinstance(out_a, HeadOutputs):
        assert torch.equal(out_a.choice, out_b.choice)
    out_a, out_b = _outputs(out_a), _outputs(out_b)
    assert out_a.keys() == out_b.keys()
    for name in out_a:
        ya, yb = out_a[name], out_b[name]
        if isinstance(ya, list):
            assert len(ya) == len(yb)
            for pa, pb in zip(ya, yb):
                assert pa.shape == pb.shape
                assert torch.allclose(pa, pb, atol=1e-6, rtol=1e-6)
        else:
            assert ya.shape == yb.shape
            assert torch.allclose(ya, yb, atol=1e-6, rtol=1e-6)
    assert torch.allclose(loss_a, loss_b, atol=1e-6, rtol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-5), name


def test_fused_supernet_heads_match_per_head(monkeypatch: pytest.MonkeyPatch) -> None:
    model, unfused = _supernet(3), _supernet(3, fuse=False)  # the same initial values
    fused, plain = _run(model, monkeypatch, True), _run(unfused, monkeypatch, False)
    _assert_same(fused, plain)
    outs = _outputs(fused[0])
    assert all(len(preds) == 3 for preds in outs.values())
    assert outs["cls"][0].shape == (6, 3) and outs["bin"][0].shape == (6, 1)
    # every head row and every logit got a gradient; the heads of a branch are one bank in the supernet
    names = sorted(name for name, _ in unfused.named_parameters())
    assert set(fused[2]) == set(plain[2]) == set(names)
    assert "routers.heads.2.1.0.weight" in names and "routers.logits" in names
    banked = {name: tuple(p.shape) for name, p in model.named_parameters() if "banks" in name}
    assert banked == {
        f"routers.banks.{k}.{kind}": (6, 16) if kind == "weight" else (6,)
        for k in range(3)
        for kind in ("weight", "bias")
    }
    # the unfused heads applied per head on the same space: the concatenating path gives the same numbers
    _assert_same(_run(unfused, monkeypatch, True), plain)


def test_fused_plain_space_matches_per_head(monkeypatch: pytest.MonkeyPatch) -> None:
    model, unfused = _space(3).train(), _space(3, fuse=False).train()
    fused, plain = _run(model, monkeypatch, True), _run(unfused, monkeypatch, False)
    _assert_same(fused, plain)
    assert fused[0]["cls"].shape == (6, 3)
    assert not any(name.startswith("routers.banks.1.") for name in fused[2])  # only the default branch was used
    assert model.head_banks[1].weight.grad is None


def test_frozen_heads_copy_the_bank_rows() -> None:
    space, unfused = _space(3), _space(3, fuse=False)
    sample = {"bin": 2, "reg": 0, "cls": 2, "l1": 1}
    net, want = space.freeze(sample), unfused.freeze(sample)
    assert net.state_dict().keys() == want.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), want.state_dict().values()))
    with torch.no_grad():
        net.heads[2][0].weight.add_(1.0)  # the grouped network owns its heads
    assert torch.equal(space.head_banks[2].weight[2:5], unfused.routers.heads[2][2][0].weight)


def test_fused_grouped_network_matches_per_head(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    net = _space(3).freeze({"bin": 2, "reg": 0, "cls": 2, "l1": 2})
    fused, plain = _run(net.train(), monkeypatch, True), _run(net, monkeypatch, False)
    _assert_same(fused, plain)
    assert list(fused[0]) == ["bin", "reg", "cls", "l1"]
    net.save(tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt").eval()
    assert loaded.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(x).values(), net.eval()(x).values()))


def test_fused_supernet_in_eval_mode_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    model, unfused = _supernet(3).eval(), _supernet(3, fuse=False).eval()
    with torch.no_grad():
        x = torch.randn(4, 8)
        fused = model(x)
        _per_head_everywhere(monkeypatch)
        plain = unfused(x)
    assert torch.equal(fused.choice, plain.choice)
    for i in range(len(TASKS)):
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(fused.preds(i), plain.preds(i)))
    selected = fused.selected()  # what validation scores: each task's argmax branch
    assert all(torch.equal(selected[t.name], fused.preds(i)[int(fused.choice[i])]) for i, t in enumerate(TASKS))


def test_heads_with_hidden_layers_run_as_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _supernet(2, HeadsConfig(hidden=[5], dropout=0.0))
    assert _plain_linear(model.routers.head(0, 0)) is None and model.head_banks is None
    _assert_same(_run(model, monkeypatch, True), _run(model, monkeypatch, False))


def test_plain_linear_detection() -> None:
    lin = nn.Linear(4, 2)
    assert _plain_linear(lin) is lin
    assert _plain_linear(nn.Sequential(lin)) is lin
    assert _plain_linear(nn.Sequential(lin, nn.ReLU())) is None
    assert _plain_linear(nn.Linear(4, 2, bias=False)) is None

    class Scaled(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return 2 * super().forward(x)

    assert _plain_linear(Scaled(4, 2)) is None
    hooked = nn.Linear(4, 2)
    hooked.register_forward_hook(lambda module, args, out: out * 0)
    assert _plain_linear(hooked) is None


def test_apply_heads_mixes_fused_and_other_heads() -> None:
    torch.manual_seed(0)
    hidden = nn.Sequential(nn.Linear(4, 2), nn.Tanh())
    heads = [nn.Linear(4, 1), nn.Sequential(nn.Linear(4, 3)), hidden, nn.Linear(4, 2)]
    x = torch.randn(5, 4)
    got, want = apply_heads(heads, x), _per_head(heads, x)
    assert [t.shape for t in got] == [t.shape for t in want]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))
    maps = [torch.randn(5, 4, 3, 3)]  # not a (B, D) tensor: every head runs as itself
    pooled = [nn.Linear(3, 2), nn.Linear(3, 2)]
    assert all(torch.equal(a, b) for a, b in zip(apply_heads(pooled, maps[0]), _per_head(pooled, maps[0])))


@pytest.mark.parametrize(
    "task",
    [
        TaskConfig(name="bin", type="binary"),
        TaskConfig(name="reg", type="regression"),
        TaskConfig(name="l1", type="regression", loss="l1"),
        TaskConfig(name="sl1", type="regression", loss="smooth_l1"),
        TaskConfig(name="cls", type="multiclass", num_classes=3),
    ],
    ids=lambda t: t.name,
)
def test_routed_loss_matches_k_loss_calls(task: TaskConfig) -> None:
    gen = torch.Generator().manual_seed(0)
    preds, logits = _routed_inputs(task, 3, gen)
    y = _target(task, gen)
    outputs = {task.name: (preds, torch.softmax(logits, -1))}
    got = _loss_and_grads(_method_loss, [task], outputs, {task.name: y}, [*preds, logits])
    want = _loss_and_grads(_reference_loss, [task], outputs, {task.name: y}, [*preds, logits])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)


def test_multitask_loss_batches_tasks_with_the_same_values() -> None:
    tasks = [
        TaskConfig(name="b1", type="binary"),
        TaskConfig(name="m1", type="regression", weight=0.5),
        TaskConfig(name="c1", type="multiclass", num_classes=3),
        TaskConfig(name="b2", type="binary", weight=2.5),
        TaskConfig(name="l1", type="regression", loss="l1"),
        TaskConfig(name="m2", type="regression"),
        TaskConfig(name="s1", type="regression", loss="smooth_l1", weight=3.0),
        TaskConfig(name="b3", type="binary"),
    ]
    gen = torch.Generator().manual_seed(0)
    inputs = {t.name: _routed_inputs(t, 3, gen) for t in tasks}
    outputs = {name: (preds, torch.softmax(logits, -1)) for name, (preds, logits) in inputs.items()}
    targets = {t.name: _target(t, gen) for t in tasks}
    leaves = [x for preds, logits in inputs.values() for x in [*preds, logits]]
    got = _loss_and_grads(_method_loss, tasks, outputs, targets, leaves)
    want = _loss_and_grads(_reference_loss, tasks, outputs, targets, leaves)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)
    _, parts = _method_loss(tasks, outputs, targets)
    assert list(parts) == [t.name for t in tasks]
    # a plain network's outputs (one tensor per task) go through the same batched call
    plain = {name: preds[0] for name, (preds, _) in inputs.items()}
    got = _loss_and_grads(multitask_loss, tasks, plain, targets, leaves[::4])
    want = _loss_and_grads(_reference_plain_loss, tasks, plain, targets, leaves[::4])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_make_optimizer_updates_match_the_loop_implementation(name: str) -> None:
    cfg = OptimizerConfig.model_validate({"name": name, "lr": 1e-2, "weight_decay": 0.01})

    def train(build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]) -> Tensor:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        logits = nn.Parameter(torch.ones(3))
        opt = build([{"params": list(model.parameters())}, {"params": [logits], "lr": 0.1, "weight_decay": 0.0}])
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            x = torch.randn(16, 8, generator=gen)
            opt.zero_grad()
            (model(x) * torch.softmax(logits, -1)).pow(2).mean().backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in [*model.parameters(), logits]])

    reference = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    extra = {"momentum": cfg.momentum} if name == "sgd" else {}
    fast = train(lambda groups: make_optimizer(groups, cfg))
    slow = train(lambda groups: reference(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False, **extra))
    assert torch.allclose(fast, slow, atol=1e-6, rtol=1e-5)
    opt = make_optimizer([nn.Parameter(torch.zeros(2))], cfg)
    assert isinstance(opt, reference)
    assert opt.param_groups[0]["foreach"] or opt.param_groups[0].get("fused")


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_cpu_optimizer_steps_skip_the_gpu_lookup(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's Adam looks for a GPU in every step (graph-capture check); on CPU parameters ours does not."""
    calls: list[bool] = []

    def lookup(check_available: bool = False) -> None:
        calls.append(check_available)
        return None

    monkeypatch.setattr(torch.accelerator, "current_accelerator", lookup)
    cfg = OptimizerConfig.model_validate({"name": name, "lr": 0.1})
    reference = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    for build, expected_calls in ((lambda ps: reference(ps, lr=0.1), 3), (lambda ps: make_optimizer(ps, cfg), 0)):
        calls.clear()
        p = nn.Parameter(torch.ones(3))
        opt = build([p])
        for _ in range(3):
            opt.zero_grad()
            p.pow(2).sum().backward()
            opt.step()
        assert len(calls) == expected_calls
        assert torch.all(p.detach() < 1.0)  # the steps were taken
