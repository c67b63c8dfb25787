"""The GPU path, checked on the CPU: compiled searches with an annealed tau, host synchronisations
per training step, SyncBatchNorm settings and bf16 mixed precision end to end."""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch._dynamo
from torch.utils._python_dispatch import TorchDispatchMode

import dmtg_nas
import dmtg_nas.hardware
from dmtg_nas.config import TrainerConfig
from dmtg_nas.errors import DmtgError, SpecError
from dmtg_nas.hardware import trainer_kwargs

from .conftest import planted_doc
from .fixtures import TASKONOMY_TASKS, celeba_doc, taskonomy_doc, write_celeba, write_taskonomy


def _short_oneshot(**strategy: Any) -> dict[str, Any]:
    """A short dmtg-oneshot search on the CPU: no warm start, no fine-tune, batches of 4."""
    return {
        "_base_": "dmtg-oneshot",
        "epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "warmup": {"method": "none"},
        "finetune": {"epochs": 0},
        "trainer": {"accelerator": "cpu"},
        **strategy,
    }


def _taskonomy_doc(root: Path, **strategy: Any) -> dict[str, Any]:
    return taskonomy_doc(root, name="taskonomy-gpu-path", strategy=_short_oneshot(**strategy))


@pytest.fixture()
def taskonomy_root(tmp_path: Path) -> Path:
    return write_taskonomy(tmp_path / "taskonomy", {"b1": 12, "b2": 4, "b3": 4}, size=16)


# ---------------------------------------------------------------------------- torch.compile


class Graphs:
    """A torch.compile backend that keeps every graph dynamo hands it (each compilation and
    recompilation of a frame) and runs it as traced."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        self.graphs.append(gm)
        return gm.forward  # type: ignore[no-any-return]

    def routing(self) -> list[torch.fx.GraphModule]:
        """The graphs of the method's routing (the relaxed sample's softmax)."""
        return [g for g in self.graphs if any(n.target in (torch.softmax, torch.Tensor.softmax) for n in g.graph.nodes)]


class EpochEnds(pl.Callback):
    """The number of compiled graphs and tau at every epoch's end."""

    def __init__(self, graphs: Graphs) -> None:
        self.graphs = graphs
        self.counts: list[int] = []
        self.taus: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.counts.append(len(self.graphs.graphs))
        self.taus.append(float(pl_module.current_tau))


@pytest.fixture()
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_annealed_tau_compiles_the_routing_once(monkeypatch: pytest.MonkeyPatch, fresh_dynamo: None) -> None:
    """An exponential tau schedule over 3 epochs (12 steps) with ``compile: true``: the routing is
    compiled (tau reaches it as a tensor, the router bank's buffer), and no graph is compiled after
    the first epoch. Floats are specialised as older torch releases do by default (there each new
    Python-float tau was a new graph, up to dynamo's recompile limit)."""
    graphs = Graphs()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=graphs))
    sets = [
        "strategy.trainer.accelerator=cpu",
        "strategy.warmup.method=none",
        "strategy.local_search.enabled=false",
        "strategy.epochs=3",
        "strategy.temperature.schedule=exponential",
        "strategy.temperature.init=2.5",
        "strategy.temperature.final=0.5",
    ]
    spec = dmtg_nas.load_spec(planted_doc(), [*sets, "strategy.trainer.compile=true"])
    ends = EpochEnds(graphs)
    with torch._dynamo.config.patch(specialize_float=True):
        compiled = dmtg_nas.run_search(spec, None, progress=False, callbacks=[ends])
    assert ends.taus[0] > ends.taus[1] > ends.taus[2]  # annealed
    assert ends.counts[0] == ends.counts[-1] <= 6  # nothing compiled after the first epoch
    # the routing: one graph for the full batches, one for the smaller last batch of an epoch
    assert 1 <= len(graphs.routing()) <= 2
    # the compiled search finds what the eager one finds
    eager = dmtg_nas.run_search(dmtg_nas.load_spec(planted_doc(), sets), None, progress=False)
    assert compiled.assignment == eager.assignment
    for task, row in eager.probabilities.items():
        assert compiled.probabilities[task] == pytest.approx(row, abs=1e-5)


# ---------------------------------------------------------------------------- host synchronisations

# operations that make the host wait for a GPU: a value read back (item, bool, float, int), a
# data-dependent shape (boolean masks, nonzero), a tensor built from Python values (a copy from the host)
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "lift_fresh", "lift_fresh_copy"}
SYNC_METHODS = ("tolist", "numpy", "cpu")  # read back without an operator the dispatch mode sees on the CPU


def _has_mask(indices: Any) -> bool:
    masks = (torch.bool, torch.uint8)
    return isinstance(indices, list | tuple) and any(isinstance(i, torch.Tensor) and i.dtype in masks for i in indices)


class HostSyncs(TorchDispatchMode):
    """Counts the operations of :data:`SYNC_OPS` and boolean-mask indexing."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.counts[name] += 1
        elif name.startswith("index") and len(args) > 1 and _has_mask(args[1]):
            self.counts["boolean mask"] += 1
        return func(*args, **(kwargs or {}))


class StepSyncs(pl.Callback):
    """The host synchronisations of every training step, from the batch's start to its end (forward,
    loss, backward, optimizer step), loader excluded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[dict[str, int]] = []
        self._mode: HostSyncs | None = None
        for method in SYNC_METHODS:
            original = getattr(torch.Tensor, method)
            monkeypatch.setattr(torch.Tensor, method, self._counted(method, original))

    def _counted(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def method(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self._mode is not None:
                self._mode.counts[name] += 1
            return original(tensor, *args, **kwargs)

        return method

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._mode = HostSyncs()
        self._mode.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        assert self._mode is not None
        self._mode.__exit__(None, None, None)
        self.steps.append(dict(self._mode.counts))
        self._mode = None


def _planted(n: int) -> dmtg_nas.SearchSpec:
    doc = planted_doc()
    doc["tasks"] = [{"name": f"t{i}", "type": "regression"} for i in range(n)]
    doc["dataset"]["group_sizes"] = [n // 2, n - n // 2]
    sets = [
        "strategy.trainer.accelerator=cpu",
        "strategy.warmup.method=none",
        "strategy.local_search.enabled=false",
        "strategy.epochs=1",
    ]
    return dmtg_nas.load_spec(doc, sets)


@pytest.mark.parametrize("tasks", [4, 12])
def test_no_host_synchronisation_in_a_training_step(tasks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vector tasks (one batched loss for all of them): no read-back, no mask, no host-built tensor
    in any step, whatever N (the non-finite check waits for the epoch's end)."""
    syncs = StepSyncs(monkeypatch)
    dmtg_nas.run_search(_planted(tasks), None, progress=False, callbacks=[syncs])
    assert len(syncs.steps) >= 4
    assert syncs.steps == [{}] * len(syncs.steps)


def test_no_host_synchronisation_with_masked_dense_losses(
    taskonomy_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The five Taskonomy tasks on K=2 branches (ten heads): the masked depth, normals, keypoint and
    edge losses and the segmentation loss with ignored pixels count their valid pixels on the device."""
    syncs = StepSyncs(monkeypatch)
    spec = dmtg_nas.load_spec(_taskonomy_doc(taskonomy_root))
    dmtg_nas.run_search(spec, None, progress=False, callbacks=[syncs])
    assert len(syncs.steps) == 3
    assert syncs.steps == [{}] * 3


def test_skip_policy_reads_one_value_per_step_whatever_n(monkeypatch: pytest.MonkeyPatch) -> None:
    """``nonfinite: skip`` must know before the update whether to skip it: one read-back per step,
    not one per task."""
    for n in (4, 12):
        syncs = StepSyncs(monkeypatch)
        spec = _planted(n).model_copy(deep=True)
        spec.strategy.nonfinite = "skip"
        dmtg_nas.run_search(spec, None, progress=False, callbacks=[syncs])
        assert len(syncs.steps) >= 4
        assert syncs.steps == [{"_local_scalar_dense": 1}] * len(syncs.steps)


# ---------------------------------------------------------------------------- SyncBatchNorm


def test_sync_batchnorm_setting_reaches_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert trainer_kwargs(TrainerConfig(accelerator="cpu"))["sync_batchnorm"] is False
    # CPU processes (gloo): SyncBatchNorm does not run there, so auto leaves batch norm per process
    assert trainer_kwargs(TrainerConfig(accelerator="cpu", devices=2))["sync_batchnorm"] is False
    assert trainer_kwargs(TrainerConfig(accelerator="cpu", devices=2, sync_batchnorm=False))["sync_batchnorm"] is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert trainer_kwargs(TrainerConfig(devices=4))["sync_batchnorm"] is True  # auto: 4 GPU processes
    assert trainer_kwargs(TrainerConfig(accelerator="gpu", devices=2, num_nodes=2))["sync_batchnorm"] is True
    assert trainer_kwargs(TrainerConfig(accelerator="gpu"))["sync_batchnorm"] is False  # one GPU
    assert trainer_kwargs(TrainerConfig(accelerator="gpu", sync_batchnorm=True))["sync_batchnorm"] is True
    assert trainer_kwargs(TrainerConfig(devices=4, sync_batchnorm=False))["sync_batchnorm"] is False


def test_sync_batchnorm_is_validated_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SpecError, match=r"strategy\.trainer\.sync_batchnorm: bad value"):
        dmtg_nas.load_spec(planted_doc(), ["strategy.trainer.sync_batchnorm=always"])
    with pytest.raises(SpecError, match="sync_batchnorm: true needs GPUs"):
        dmtg_nas.load_spec(planted_doc(), ["strategy.trainer.accelerator=cpu", "strategy.trainer.sync_batchnorm=true"])
    ours = r"'sync_batchnorm' is set by the package: use strategy\.trainer\.sync_batchnorm"
    with pytest.raises(SpecError, match=ours):
        dmtg_nas.load_spec(planted_doc(), ["strategy.trainer.extra={sync_batchnorm: true}"])
    spec = dmtg_nas.load_spec(planted_doc(), ["strategy.trainer.sync_batchnorm=true"])  # accelerator auto
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DmtgError, match="sync_batchnorm is true but training runs on the CPU"):
        trainer_kwargs(spec.strategy.trainer)


def test_search_trainer_is_built_with_sync_batchnorm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search's Trainer gets the setting (Lightning's layer-sync plugin, which converts the batch
    norm layers of a DDP run to SyncBatchNorm when the fit starts, and back when it ends). The
    conversion itself is Lightning's: SyncBatchNorm refuses CPU tensors, so no CPU DDP run shows it."""
    import dmtg_nas.nni.evaluator as evaluator
    from dmtg_nas.components import load_data

    spec = dmtg_nas.load_spec(planted_doc(), ["strategy.trainer.accelerator=cpu"])
    data = load_data(spec)
    assert evaluator.build_evaluator(spec, data).trainer._accelerator_connector._layer_sync is None
    monkeypatch.setattr(dmtg_nas.hardware, "sync_batchnorm", lambda cfg: True)  # as auto decides with 2+ GPUs
    layer_sync = evaluator.build_evaluator(spec, data).trainer._accelerator_connector._layer_sync
    assert type(layer_sync).__name__ == "TorchSyncBatchNorm"


# ---------------------------------------------------------------------------- bf16 mixed precision


class TrainLoss(pl.Callback):
    """The loss of every training step, the Trainer's precision, and the dtypes of what the
    convolutions and linear layers return in training steps (bfloat16 only where autocast is on)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.precisions: set[str] = set()
        self.dtypes: set[torch.dtype] = set()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def _seen(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if module.training and isinstance(output, torch.Tensor):
            self.dtypes.add(output.dtype)

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.precisions.add(str(trainer.precision))
        layers = [m for m in pl_module.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
        self._hooks += [m.register_forward_hook(self._seen) for m in layers]

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


def test_bf16_mixed_search_on_dense_tasks(taskonomy_root: Path) -> None:
    """bf16 autocast on the CPU, batch-norm conv branches, the five masked dense losses, an annealed
    tau: the search finishes with finite losses and a grouping of every task."""
    doc = _taskonomy_doc(taskonomy_root, epochs=2, temperature={"schedule": "linear", "init": 2.0, "final": 0.5})
    spec = dmtg_nas.load_spec(doc, ["strategy.trainer.precision=bf16-mixed"])
    losses = TrainLoss()
    result = dmtg_nas.run_search(spec, None, progress=False, callbacks=[losses])
    assert len(losses.losses) == 6 and all(math.isfinite(v) and v > 0 for v in losses.losses)
    assert losses.precisions == {"bf16-mixed"} and losses.dtypes == {torch.bfloat16}  # autocast was on
    assert sorted(result.assignment) == sorted(t["name"] for t in TASKONOMY_TASKS)
    assert set(result.assignment.values()) <= {0, 1}
    assert all(math.isfinite(p) for row in result.probabilities.values() for p in row)
    assert math.isfinite(result.metrics["totals"]["test"]["total_loss"])


def test_bf16_mixed_search_on_celeba_resnet(tmp_path: Path) -> None:
    """bf16 autocast with the CelebA encoder (celeba_resnet: conv, batch norm, residual block) and
    binary heads in a bank."""
    root = write_celeba(tmp_path / "celeba", n=48)
    tasks = ["Black_Hair", "Smiling", "Male", "Young"]
    strategy = _short_oneshot(epochs=2, batch_size=8, trainer={"accelerator": "cpu", "precision": "bf16-mixed"})
    spec = dmtg_nas.load_spec(celeba_doc(root, tasks, name="celeba-bf16", dataset={"size": 16}, strategy=strategy))
    losses = TrainLoss()
    result = dmtg_nas.run_search(spec, None, progress=False, callbacks=[losses])
    assert len(losses.losses) >= 4 and all(math.isfinite(v) and v > 0 for v in losses.losses)
    assert losses.precisions == {"bf16-mixed"} and losses.dtypes == {torch.bfloat16}  # autocast was on
    assert sorted(result.assignment) == sorted(tasks)
    assert all(math.isfinite(p) for row in result.probabilities.values() for p in row)
