"""The DMTG method, in one place: the relaxed sample of the grouping and the loss it weights.

Implements Gao et al., "DMTG: One-Shot Differentiable Multi-Task Grouping", ICML 2024
(arXiv:2407.05082). :class:`RouterBank` is the supernet version of the space's
:class:`~dmtg_nas.nni.space.TaskRouters`: it holds the grouping logits S (N x K, one row per task)
next to the same K*N heads, and per training step

- :meth:`RouterBank.sample`: one Gumbel-softmax sample per task row, shared by the batch,
  ``z = softmax((S + g) / tau)`` (N, K), with the step's noise ``g`` and temperature ``tau`` given as
  tensors (``hard``: straight-through one-hot samples);
- :meth:`RouterBank.loss`: ``sum_i w_i sum_k z[i, k] L_i(head[k, i](branch_k(x)), y_i)`` from every
  head's loss (:func:`~dmtg_nas.engine.losses.head_losses`);
- :meth:`RouterBank.entropy`: the mean entropy of softmax(S) (an optional regulariser);
- the export is ``argmax_k S[i, k]`` per task.

The noise of step s is :func:`gumbel_noise` (seed, s): every process of a distributed run draws the
same sample, and a resumed run continues the same sequence. The schedule of tau, the optimizer
(weights and logits together, same batch) and the warm start of S are elsewhere:
:class:`~dmtg_nas.nni.oneshot.DMTGLightningModule`, :mod:`dmtg_nas.warmstart`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
from torch import Tensor, nn

from ..engine.losses import HeadOutputs, LossBlock, take, weighted_sum
from ..engine.module import ARCH_PARAM_FLAG
from ..network import apply_heads
from ..schema import TaskConfig
from .space import HeadBank, TaskRouters

__all__ = ["RouterBank", "gumbel_noise"]


def gumbel_noise(seed: int, step: int, shape: Sequence[int]) -> Tensor:
    """Gumbel(0, 1) noise of ``shape`` for optimisation step ``step`` (deterministic, CPU)."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    u = torch.rand(tuple(shape), generator=gen, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return (-torch.log(-torch.log(u))).float()


class RouterBank(BaseSuperNetModule):
    """Every task's K heads and the (N, K) grouping logits (see the module docstring).

    ``forward(feats)`` returns all K*N heads' predictions (:class:`HeadOutputs`; heads in banks run
    as one matrix per branch) and each task's current argmax branch. The heads are the space's own
    modules (the same state-dict names under ``routers``); the logits are ``routers.logits``.

    Args:
        routers: the space's routers (their heads and choices are taken over).
        logits: (N, K) initial logits, rows in ``routers.task_names`` order.
    """

    def __init__(self, routers: TaskRouters, logits: Tensor) -> None:
        super().__init__()
        self.task_names = list(routers.task_names)
        self.num_branches = routers.num_branches
        self.choices = [self.add_mutable(c) for c in routers.choices]
        self.heads = routers.heads
        self.banks = routers.banks
        self.logits = nn.Parameter(logits.detach().clone().float().reshape(len(self.task_names), self.num_branches))
        setattr(self.logits, ARCH_PARAM_FLAG, True)
        # the step's temperature and Gumbel noise, on the module's device, overwritten in place by
        # set_step(): the (compiled) routing reads them as tensors, so a new tau is neither a new
        # graph for torch.compile nor a copy from the host that waits for the GPU (not in state dicts)
        self.tau: Tensor
        self.noise: Tensor
        self.register_buffer("tau", torch.ones(()), persistent=False)
        self.register_buffer("noise", torch.zeros(len(self.task_names), self.num_branches), persistent=False)

    # ------------------------------------------------------------------------------------------
    # the method
    # ------------------------------------------------------------------------------------------

    def set_step(self, noise: Tensor, tau: float) -> tuple[Tensor, Tensor]:
        """Make ``noise`` (N, K) and ``tau`` this step's (in place, without waiting for the device);
        returns the buffers ``(noise, tau)``."""
        with torch.no_grad():
            self.tau.fill_(float(tau))
            self.noise.copy_(noise, non_blocking=True)
        return self.noise, self.tau

    def sample(self, noise: Tensor, tau: Tensor, hard: bool = False) -> Tensor:
        """(N, K) relaxed sample ``softmax((S + noise) / tau)``, differentiable in S; ``hard``: the
        one-hot argmax forward, the soft sample's gradient backward (straight-through)."""
        z = torch.softmax((self.logits + noise.to(self.logits.device)) / tau, dim=-1)
        if hard:
            one_hot = torch.zeros_like(z).scatter_(-1, z.argmax(-1, keepdim=True), 1.0)
            z = one_hot - z.detach() + z
        return z

    @staticmethod
    def loss(z: Tensor, blocks: Sequence[LossBlock], tasks: Sequence[TaskConfig]) -> tuple[Tensor, dict[str, Tensor]]:
        """``sum_i w_i sum_k z[i, k] L[i, k]`` from the head losses (blocks in
        :func:`~dmtg_nas.engine.losses.head_losses` order), and each task's sample-weighted loss
        ``sum_k z[i, k] L[i, k]`` (unweighted by w_i)."""
        parts: dict[str, Tensor] = {}
        terms: list[Tensor] = []
        for block in blocks:
            if isinstance(block.losses, list):  # one task, one loss per head
                i = block.tasks[0]
                row = z[i]
                loss = row[0] * block.losses[0]
                for k in range(1, len(block.losses)):
                    loss = loss + row[k] * block.losses[k]
                parts[tasks[i].name] = loss
                terms.append(tasks[i].weight * loss)
                continue
            losses = (take(z, 0, block.tasks) * block.losses).sum(dim=-1)  # (n,)
            parts.update(zip([tasks[i].name for i in block.tasks], losses.unbind()))
            terms.append(weighted_sum([tasks[i].weight for i in block.tasks], losses))
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total, {task.name: parts[task.name] for task in tasks}

    def entropy(self) -> Tensor:
        """Mean over tasks of the entropy of softmax(S[i])."""
        probs = torch.softmax(self.logits, -1)  # (N, K)
        return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()

    def probabilities(self) -> dict[str, list[float]]:
        """``{task: softmax(S[i])}``: each task's current distribution over the branches."""
        rows = torch.softmax(self.logits.detach(), dim=-1).tolist()
        return dict(zip(self.task_names, rows))

    # ------------------------------------------------------------------------------------------
    # the supernet
    # ------------------------------------------------------------------------------------------

    def forward(self, feats: Sequence[Any]) -> HeadOutputs:
        """Every head's prediction on its branch's output ``feats[k]``."""
        choice = self.logits.detach().argmax(-1)
        if self.banks is not None:
            banks = cast(list[HeadBank], list(self.banks))
            every = torch.stack([bank.matrix(f) for bank, f in zip(banks, feats)])  # (K, B, W)
            return HeadOutputs(self.task_names, choice, bank=every, offsets=banks[0].offsets)
        lists = [cast(nn.ModuleList, hs) for hs in cast(nn.ModuleList, self.heads)]
        per_branch = [apply_heads([hs[k] for hs in lists], f) for k, f in enumerate(feats)]
        per_task = [[branch[i] for branch in per_branch] for i in range(len(lists))]
        return HeadOutputs(self.task_names, choice, per_task=per_task)

    def head(self, i: int, k: int) -> nn.Module:
        """Task i's head on branch k (a standalone copy for banks)."""
        if self.banks is not None:
            return cast(HeadBank, self.banks[k]).head(i)
        return cast(nn.ModuleList, cast(nn.ModuleList, self.heads)[i])[k]

    def chosen_heads(self, sample: Mapping[str, Any]) -> dict[str, nn.Module]:
        """``{task: its head on its sampled branch}``."""
        branch = [int(c.freeze(dict(sample))) for c in self.choices]
        return {name: self.head(i, branch[i]) for i, name in enumerate(self.task_names)}

    # NNI's supernet-module interface
    def resample(self, memo: dict[str, Any]) -> dict[str, Any]:
        return {}  # the sample is drawn per step by the one-shot module (sample())

    def export(self, memo: dict[str, Any]) -> dict[str, Any]:
        best = self.logits.detach().argmax(-1).tolist()
        return {name: int(b) for name, b in zip(self.task_names, best) if name not in memo}

    def export_probs(self, memo: dict[str, Any]) -> dict[str, Any]:
        probs = self.probabilities()
        return {name: dict(enumerate(p)) for name, p in probs.items() if name not in memo}

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.logits]

    def freeze(self, sample: dict[str, Any]) -> nn.Module:
        return nn.ModuleDict(self.chosen_heads(sample))

    @classmethod
    def mutate(
        cls, module: nn.Module, name: str, memo: dict[str, Any], mutate_kwargs: dict[str, Any]
    ) -> tuple[RouterBank, bool] | None:
        """NNI mutation hook: the space's :class:`TaskRouters` become a :class:`RouterBank`; the
        initial logits are ``mutate_kwargs["initial_logits"]`` (``{task: K values}``, a warm start)
        and ``mutate_kwargs["logits_init"]`` for the tasks not listed."""
        if not isinstance(module, TaskRouters):
            return None
        k = module.num_branches
        init = float(mutate_kwargs.get("logits_init", 1.0))
        given: Mapping[str, Sequence[float]] = mutate_kwargs.get("initial_logits") or {}
        rows = []
        for label in module.task_names:
            row = given.get(label)
            if row is not None and len(row) != k:
                raise ValueError(f"initial logits of {label!r} have {len(row)} values for {k} branches")
            rows.append([float(v) for v in row] if row is not None else [init] * k)
        return cls(module, torch.tensor(rows, dtype=torch.float32).reshape(len(rows), k)), True
