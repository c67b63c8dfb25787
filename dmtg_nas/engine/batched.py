"""Many small networks trained side by side as one batched computation.

HOA's subset networks and the merge check's group networks are many networks of the same shape
(the spec's encoder with a head for every task, one network per task subset). Trained one after
another, small networks spend a step almost entirely in per-operation overhead; here their
parameters are stacked and one step trains all of them: ``mlp`` encoders with linear heads as
batched matrix products (:func:`~dmtg_nas.engine.stacked.stacked_forward`), other networks under
``torch.func.vmap``. Each network's update uses only its own gradient (Adam, AdamW and SGD are
per-parameter; gradient clipping is applied per network), so it trains exactly as it would alone on
the same batch order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from ..data import TaskData, TensorTaskDataset, make_loader
from ..network import GroupedNetwork
from ..partitions import members
from ..progress import stage_line
from ..schema import SearchSpec
from ..tasks import TaskMetrics
from .losses import multitask_loss
from .module import MultiTaskModule
from .networks import partition_network, plain_network
from .stacked import stacked_forward
from .train import PerTask, train_partition

__all__ = [
    "SubsetRows",
    "TrainingStopped",
    "subset_losses_joint",
    "subset_losses_one_by_one",
    "subset_losses_seeded",
    "trains_batched",
]


class TrainingStopped(Exception):
    """Subset trainings stopped at a step boundary because their ``stop()`` said so (a signal)."""


SubsetRows = dict[int, dict[str, PerTask]]  # task mask -> {"val": per-task, "test": per-task}


def _budget(spec: SearchSpec) -> int:
    return spec.strategy.epochs + spec.strategy.finetune.epochs


def subset_losses_one_by_one(
    spec: SearchSpec,
    data: TaskData,
    subsets: Sequence[int],
    progress: Callable[[str], None] | None = None,
    stage: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> SubsetRows:
    """Train one network per subset mask; ``{mask: {"val": per-task, "test": per-task}}``. ``stage``:
    draw a progress line on stderr named so, counting the networks. ``stop``: asked before each
    network; True raises :class:`TrainingStopped`."""
    out: SubsetRows = {}
    with _line(stage, f"networks 0/{len(subsets)}", len(subsets)) as line:
        for i, mask in enumerate(subsets):
            if stop is not None and stop():
                raise TrainingStopped
            tasks = [spec.tasks[j] for j in members(mask)]
            sub = spec.model_copy(update={"tasks": tasks, "branches": 1})
            _, metrics = train_partition(sub, data, [[t.name for t in tasks]])
            out[mask] = {"val": metrics["val"], "test": metrics["test"]}
            if progress is not None:
                progress(f"hoa: network {i + 1}/{len(subsets)} ({', '.join(t.name for t in tasks)})")
            line.set_description_str(f"{stage}: networks {i + 1}/{len(subsets)}", refresh=False)
            line.update(1)
    return out


def _line(stage: str | None, counting: str, total: int, note: str = "") -> Any:
    """The progress line ``"<stage>: <counting>"`` on stderr (:func:`~dmtg_nas.progress.stage_line`),
    or, without a stage, a line that draws nothing."""
    return stage_line(f"{stage}: {counting}", total, note) if stage else tqdm(disable=True)


_VECTOR_TYPES = {"regression", "binary", "multiclass"}


def subset_losses_joint(
    spec: SearchSpec,
    data: TaskData,
    subsets: Sequence[int],
    networks: dict[int, torch.nn.Module] | None = None,
) -> SubsetRows:
    """HOA's per-subset networks, trained side by side as one batched computation.

    Every subset gets its own network (the spec's encoder with a head for every task; only its
    members' heads are trained, the others get no gradient and stay untouched). The parameters are
    stacked and the networks run under ``torch.func.vmap``, so a step costs about as many kernel
    launches as one network's instead of one per network. Each network's update uses only its own
    gradient (Adam, AdamW and SGD are per-parameter; gradient clipping is applied per network), so
    it trains exactly as it would alone on the same batch order. Needs in-memory tensor data,
    vector tasks and encoders without running statistics (batch norm); otherwise the subsets are
    trained one by one. Returns ``{mask: {"val": per-task, "test": per-task}}``; with ``networks``
    (batched training only), the trained networks are put there by mask (one-branch grouped networks
    with a head for every task; only the mask's heads are trained).
    """
    return subset_losses_seeded(spec, data, [(spec.strategy.seed, subsets)], [networks])[0]


def _seeded(spec: SearchSpec, seed: int) -> SearchSpec:
    return spec.model_copy(update={"strategy": spec.strategy.model_copy(update={"seed": seed})})


def subset_losses_seeded(
    spec: SearchSpec,
    data: TaskData,
    runs: Sequence[tuple[int, Sequence[int]]],
    networks: Sequence[dict[int, torch.nn.Module] | None] = (),
    stage: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[SubsetRows]:
    """Independent trainings of subset networks, all in one batched computation: ``runs[i] = (seed,
    subsets)`` trains those subsets' networks as :func:`subset_losses_joint` would with
    ``strategy.seed = seed`` (that seed's initialisations and data order; each run's networks see
    their own batches). One batched computation costs far less than one per run where a step is
    dominated by per-call overhead (small networks). ``networks[i]``, where given and not None,
    receives run i's trained networks by mask. ``stage``: draw a progress line on stderr named so.
    ``stop``: asked after every training step (or before every network where they train one by
    one); True raises :class:`TrainingStopped`. Returns one table per run."""
    runs = [(seed, list(subsets)) for seed, subsets in runs]
    keep = list(networks) + [None] * (len(runs) - len(networks))
    if not trains_batched(spec, data):
        return [
            subset_losses_one_by_one(_seeded(spec, seed), data, subsets, None, stage, stop) for seed, subsets in runs
        ]
    nets, masks, seeds = [], [], []
    for seed, subsets in runs:
        pl.seed_everything(seed, workers=True, verbose=False)
        for mask in subsets:
            nets.append(partition_network(spec, [spec.task_names], data.input_shape))
            masks.append(mask)
            seeds.append(seed)
    if not nets:
        return [{} for _ in runs]
    result = train_stacked(spec, data, nets, masks, seeds, stage=stage, stop=stop)
    out, at = [], 0
    for (_, subsets), kept in zip(runs, keep):
        mine = range(at, at + len(subsets))
        out.append({masks[s]: result[s] for s in mine})
        if kept is not None:
            kept.update({masks[s]: nets[s] for s in mine})
        at += len(subsets)
    return out


def trains_batched(spec: SearchSpec, data: TaskData) -> bool:
    """Whether :func:`subset_losses_joint` trains its networks batched (in-memory tensor data, vector
    tasks, an encoder without buffers such as batch-norm statistics) rather than one by one."""
    tensor_data = all(isinstance(getattr(data, s), TensorTaskDataset) for s in ("train", "val", "test"))
    if not tensor_data or any(t.type not in _VECTOR_TYPES for t in spec.tasks):
        return False
    with torch.random.fork_rng(devices=[]):  # the probe network's initialisation leaves the run's stream as it was
        net = plain_network(spec.tasks[:1], spec.backbone, spec.heads, data.input_shape, {spec.tasks[0].name: 0})
    return not any(True for _ in net.buffers())


def train_stacked(
    spec: SearchSpec,
    data: TaskData,
    nets: Sequence[torch.nn.Module],
    subsets: Sequence[int],
    seeds: Sequence[int] | None = None,
    *,
    stage: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[dict[str, PerTask]]:
    """Train ``nets[s]`` on the tasks of ``subsets[s]``, all at once (see :func:`subset_losses_joint`);
    ``seeds[s]`` sets network s's data order (default: the strategy's seed for all). Returns network
    s's ``{"val": per-task, "test": per-task}`` at position s. ``stage``: draw a progress line on
    stderr, ``STAGE: epoch E/N`` with the time left of the whole training. ``stop``: asked after
    every step; True raises :class:`TrainingStopped` (the networks are left as they are)."""
    strat, tasks = spec.strategy, list(spec.tasks)
    params, _ = stack_module_state(list(nets))  # type: ignore[arg-type]
    base = copy.deepcopy(nets[0]).to("meta")
    member = torch.tensor([[float(mask >> i & 1) * t.weight for i, t in enumerate(tasks)] for mask in subsets])

    def outputs(p: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        return functional_call(base, p, (x,))  # type: ignore[no-any-return]

    def part_losses(out: dict[str, torch.Tensor], ys: dict[str, torch.Tensor]) -> torch.Tensor:
        # the training loss's per-task parts: tasks sharing an elementwise loss take one call for all
        # (under vmap every call is costly, so fewer calls make a cheaper step)
        _, parts = multitask_loss(tasks, out, ys)
        return torch.stack([parts[t.name] for t in tasks])

    def losses(p: dict[str, torch.Tensor], x: torch.Tensor, ys: dict[str, torch.Tensor]) -> torch.Tensor:
        return part_losses(outputs(p, x), ys)

    orders = sorted(set(seeds)) if seeds is not None else [strat.seed]
    # one data order per distinct seed; a network reads the batches of its own order
    order_of = torch.tensor([orders.index(s) for s in seeds] if seeds is not None else [0] * len(nets))
    per_net = len(orders) > 1
    batch_dim = 0 if per_net else None
    # mlp encoders with linear heads: the networks' forward as batched matrix products, vmap for the
    # losses only (the same values; vmap's cost per operation is most of a small network's step);
    # other networks: vmap of the whole network
    fast = stacked_forward(base) if isinstance(base, GroupedNetwork) else None
    batched_outputs: Callable[..., dict[str, torch.Tensor]]
    if fast is None:
        batched_losses = vmap(losses, in_dims=(0, batch_dim, batch_dim), randomness="different")
        batched_outputs = vmap(outputs, in_dims=(0, None), randomness="different")
    else:
        batched_part_losses = vmap(part_losses, in_dims=(0, batch_dim))

        def batched_losses(p: dict[str, torch.Tensor], x: torch.Tensor, ys: dict[str, torch.Tensor]) -> torch.Tensor:
            return batched_part_losses(fast(p, x), ys)  # type: ignore[no-any-return]

        batched_outputs = fast

    holder = torch.nn.ParameterList([torch.nn.Parameter(v) for v in params.values()])
    module = MultiTaskModule(tasks, strat.optimizer, strat.lr_schedule, _budget(spec))
    module.set_model(holder)
    configured = module.configure_optimizers()
    optimizer = configured if isinstance(configured, torch.optim.Optimizer) else configured["optimizer"]
    scheduler = None if isinstance(configured, torch.optim.Optimizer) else configured["lr_scheduler"]
    stacked = dict(zip(params, holder))
    loaders = [make_loader(data.train, strat.batch_size, shuffle=True, seed=o + 1, shard=False) for o in orders]

    metrics = [TaskMetrics([tasks[i] for i in members(mask)], sync=False) for mask in subsets]  # reset per pass

    def evaluate_all(split: str) -> list[dict[str, dict[str, float]]]:
        for m in metrics:
            m.reset()
        base.eval()
        with torch.no_grad():
            for x, ys in make_loader(getattr(data, split), 1024, shuffle=False, shard=False):
                out = batched_outputs(stacked, x)
                for s, m in enumerate(metrics):
                    m.update({t.name: out[t.name][s] for t in m.tasks}, ys)
        base.train()
        return [m.compute() for m in metrics]

    epochs = _budget(spec)
    on_train_loss = isinstance(scheduler, dict) and scheduler["monitor"] == "train_loss"  # plateau on it
    with _line(stage, f"epoch 1/{epochs}", epochs * len(loaders[0]), f"{len(nets)} networks") as line:
        for epoch in range(epochs):
            line.set_description_str(f"{stage}: epoch {epoch + 1}/{epochs}", refresh=False)
            epoch_loss: torch.Tensor | float = 0.0  # summed on the loss's device (no sync per step)
            for batches in zip(*loaders):
                x, ys = batches[0]
                if per_net:  # every network's batch from its own order: (networks, batch, ...)
                    x = torch.stack([b[0] for b in batches])[order_of]
                    ys = {k: torch.stack([b[1][k] for b in batches])[order_of] for k in ys}
                optimizer.zero_grad(set_to_none=True)
                total = (batched_losses(stacked, x, ys) * member).sum()
                total.backward()
                if strat.gradient_clip:
                    norms = torch.sqrt(sum(p.grad.flatten(1).pow(2).sum(1) for p in holder if p.grad is not None))
                    scale = (strat.gradient_clip / (norms + 1e-6)).clamp(max=1.0)
                    for p in holder:
                        if p.grad is not None:
                            p.grad.mul_(scale.view(-1, *([1] * (p.grad.dim() - 1))))
                optimizer.step()
                if stop is not None and stop():
                    raise TrainingStopped
                if on_train_loss:
                    epoch_loss = epoch_loss + total.detach()
                line.update(1)
            if on_train_loss:  # all networks' summed training loss, per step
                scheduler["scheduler"].step(float(epoch_loss) / max(len(loaders[0]), 1))  # type: ignore[index]
            elif isinstance(scheduler, dict):  # plateau: the summed validation loss of all networks
                val = evaluate_all("val")
                scheduler["scheduler"].step(sum(r["loss"] for per in val for r in per.values()))
            elif scheduler is not None:
                scheduler.step()
    result = {split: evaluate_all(split) for split in ("val", "test")}
    with torch.no_grad():  # the trained weights back into the networks
        for s, net in enumerate(nets):
            net.load_state_dict({name: value[s] for name, value in stacked.items()})
    return [{split: result[split][s] for split in ("val", "test")} for s in range(len(nets))]
