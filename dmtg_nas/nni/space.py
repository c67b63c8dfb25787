"""The task-grouping search space as an NNI model space.

The space holds an optional shared stem (``backbone.shared_stem`` stages used by every branch), K
branch encoders and, for every task, K heads (one per branch): K*N heads. Each task carries one
``nni.mutable.Categorical`` over the K branches, labelled by the task's name, so
``space.simplify()`` lists the N choices and ``space.freeze({task: branch, ...})`` returns the grouped
network (:class:`~dmtg_nas.network.GroupedNetwork`): only the branches some task uses and one head
per task, a plain torch module that saves, loads and runs without NNI.

The heads and the choices are one module, :class:`TaskRouters` (``space.routers``); the DMTG
strategy replaces it by its supernet version (:class:`~dmtg_nas.nni.router.RouterBank`), which
reads the same heads. The space's forward is the same either way: the stem, the K branches, then
``routers(feats)``.

Heads that are one plain ``nn.Linear`` on (B, D) features (the default ``heads: {hidden: []}``) are
stored per branch as one :class:`HeadBank` (weight (sum of output widths, D), bias; ``routers.banks.k``
in the state dict): one tensor per branch instead of 2*N keeps the per-task work of a step (autograd
nodes, gradient accumulation, optimizer state) out of the supernet. The frozen grouped network holds
one ``nn.Linear`` per task again (copied from the bank).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from nni.mutable import Categorical
from nni.nas.nn.pytorch import ModelSpace, MutableModule
from torch import Tensor, nn

from ..backbones import FeatureSpec
from ..engine.networks import build_parts
from ..errors import DmtgError
from ..network import GroupedNetwork, apply_heads, plain_linear
from ..schema import BackboneConfig, HeadsConfig, SearchSpec, TaskConfig

__all__ = ["GroupingSpace", "HeadBank", "TaskRouters"]


class HeadBank(nn.Module):
    """The plain linear heads of all N tasks on one branch as one layer: ``weight`` (sum of the
    tasks' output widths, D) and ``bias``; task i's head is rows ``offsets[i]:offsets[i + 1]``.

    Built from the heads it replaces (their values are copied, so a bank starts where they were);
    :meth:`head` gives task i's head back as a standalone module of the same structure.
    """

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        linears = [plain_linear(h) for h in heads]
        if not linears or any(lin is None for lin in linears):
            raise ValueError("a head bank holds plain linear heads only")
        lins = [cast(nn.Linear, lin) for lin in linears]
        self.in_features = lins[0].in_features
        self.sizes = [lin.out_features for lin in lins]
        self.wrapped = [type(h) is nn.Sequential for h in heads]  # nn.Sequential(nn.Linear) or a bare nn.Linear
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.weight = nn.Parameter(torch.cat([lin.weight.detach() for lin in lins]).clone())
        self.bias = nn.Parameter(torch.cat([cast(Tensor, lin.bias).detach() for lin in lins]).clone())

    def forward(self, x: Tensor) -> list[Tensor]:
        """Every task's prediction on branch output ``x`` (B, D): one matrix product, split per task."""
        return list(self.matrix(x).split(self.sizes, dim=-1))

    def matrix(self, x: Tensor) -> Tensor:
        """All tasks' predictions as one (B, W) tensor (task i in columns ``offsets[i]:offsets[i + 1]``)."""
        return F.linear(x, self.weight, self.bias)

    def predict(self, i: int, x: Tensor) -> Tensor:
        """Task i's prediction alone."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return F.linear(x, self.weight[lo:hi], self.bias[lo:hi])

    def head(self, i: int) -> nn.Module:
        """Task i's head as its own module (a copy of the bank's rows, with the original structure)."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        # built uninitialised: the values are copied below, and drawing an initialisation would move
        # the global random stream (and so every network initialised after this freeze)
        lin = torch.nn.utils.skip_init(
            nn.Linear, self.in_features, hi - lo, device=self.weight.device, dtype=self.weight.dtype
        )
        with torch.no_grad():
            lin.weight.copy_(self.weight[lo:hi])
            lin.bias.copy_(self.bias[lo:hi])
        lin.train(self.training)
        return nn.Sequential(lin) if self.wrapped[i] else lin


class TaskRouters(MutableModule):
    """The N tasks' K heads and each task's choice of branch (``Categorical(range(K), label=task)``).

    The heads are held as ``heads`` (``heads[i][k]``: task i's head on branch k) or, when every head
    is a plain linear layer on vector features, as one :class:`HeadBank` per branch (``banks``).
    Outside a search, ``forward`` routes every task to its default (first) branch.
    """

    def __init__(self, tasks: Sequence[TaskConfig], heads: Sequence[Sequence[nn.Module]], fuse: bool) -> None:
        super().__init__()
        self.task_names = [t.name for t in tasks]
        self.num_branches = len(heads[0]) if heads else 0
        self.choices = [self.add_mutable(Categorical(list(range(self.num_branches)), label=t.name)) for t in tasks]
        self.heads: nn.ModuleList | None = None
        self.banks: nn.ModuleList | None = None
        if fuse:
            self.banks = nn.ModuleList([HeadBank([hs[k] for hs in heads]) for k in range(self.num_branches)])
        else:
            self.heads = nn.ModuleList([nn.ModuleList(hs) for hs in heads])

    def head(self, i: int, k: int) -> nn.Module:
        """Task i's head on branch k: the module itself, or with banks a standalone copy of its rows."""
        if self.banks is not None:
            return cast(HeadBank, self.banks[k]).head(i)
        return cast(nn.ModuleList, cast(nn.ModuleList, self.heads)[i])[k]

    def branch_heads(self, k: int) -> list[nn.Module]:
        """Every task's head on branch k (modules; not for banks)."""
        return [cast(nn.ModuleList, hs)[k] for hs in cast(nn.ModuleList, self.heads)]

    def forward(self, feats: Sequence[Any]) -> dict[str, Tensor]:
        """``{task: prediction}`` with every task on its default branch; ``feats[k]`` is branch k's
        output ((B, D) or a list of maps)."""
        chosen = [int(c.default()) for c in self.choices]
        preds: list[Tensor | None] = [None] * len(chosen)
        for k in sorted(set(chosen)):
            idx = [i for i, c in enumerate(chosen) if c == k]
            if self.banks is not None:
                every = self.banks[k](feats[k])
                for i in idx:
                    preds[i] = every[i]
                continue
            heads = self.branch_heads(k)
            for i, pred in zip(idx, apply_heads([heads[i] for i in idx], feats[k])):
                preds[i] = pred
        return {name: cast(Tensor, pred) for name, pred in zip(self.task_names, preds)}

    def chosen_heads(self, sample: Mapping[str, Any]) -> dict[str, nn.Module]:
        """``{task: its head on its sampled branch}`` (the modules; copies for banks)."""
        branch = [int(c.freeze(dict(sample))) for c in self.choices]
        return {name: self.head(i, branch[i]) for i, name in enumerate(self.task_names)}

    def freeze(self, sample: Mapping[str, Any]) -> nn.ModuleDict:
        return nn.ModuleDict(self.chosen_heads(sample))


class GroupingSpace(ModelSpace):
    """K branches, K*N heads, one Categorical per task (see the module docstring).

    Args:
        tasks: the N tasks.
        num_branches: K.
        backbone: the branch encoder's config.
        heads: the head config.
        input_shape: shape of one input sample.
        branch_init: ``copy`` starts all K branches (and the K heads of a task) from identical
            weights, as the method's reference code does; ``independent`` initialises each separately.
        fuse_heads: store the heads as one :class:`HeadBank` per branch when every head is a plain
            linear layer on vector features (the values are the same as without; False keeps one
            module per head).
        weights: ``strategy.init.weights``: ``default`` or ``xavier``
            (:func:`~dmtg_nas.engine.networks.init_weights`).
    """

    def __init__(
        self,
        tasks: Sequence[TaskConfig],
        num_branches: int,
        backbone: BackboneConfig,
        heads: HeadsConfig,
        input_shape: Sequence[int],
        branch_init: str = "copy",
        fuse_heads: bool = True,
        weights: str = "default",
    ) -> None:
        super().__init__()
        parts = build_parts(tasks, num_branches, backbone, heads, input_shape, branch_init, weights)
        self.tasks = list(tasks)
        self.num_branches = num_branches
        self.architecture = parts.architecture
        self.stem = parts.stem  # shared by all branches (None: fully separate branches)
        self.branches = nn.ModuleList(parts.branches)
        self.features: FeatureSpec = parts.features
        plain = parts.features.kind == "vector" and all(plain_linear(h) is not None for hs in parts.heads for h in hs)
        # TaskRouters, or the search's RouterBank once the DMTG strategy has mutated the space
        self.routers: Any = TaskRouters(tasks, parts.heads, fuse=fuse_heads and plain)

    @classmethod
    def from_spec(cls, spec: SearchSpec, input_shape: Sequence[int]) -> GroupingSpace:
        init = spec.strategy.init
        return cls(spec.tasks, spec.groups, spec.backbone, spec.heads, input_shape, init.branches, weights=init.weights)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def head_banks(self) -> nn.ModuleList | None:
        """The per-branch head banks, or None when the heads are modules of their own."""
        return cast(nn.ModuleList | None, getattr(self.routers, "banks", None))

    def forward(self, x: Tensor) -> Any:
        """The stem once, all K branches once, then the routers: ``{task: prediction}`` for the space
        (each task on its default branch), every head's prediction for the search's supernet."""
        h = self.stem(x) if self.stem is not None else x
        feats = [branch(h) for branch in self.branches]  # K x (B, D), or K x [(B, C_j, H_j, W_j), ...]
        return self.routers(feats)

    def freeze(self, sample: Mapping[str, Any], *, reuse: bool = False) -> GroupedNetwork:  # type: ignore[override]
        """The grouped network for ``sample`` (``{task: branch index}``), keeping the weights.

        The network holds copies of the space's modules; ``reuse=True`` hands it the modules
        themselves (no copies: for a space built only to be frozen once and then dropped).
        """
        exc = self.check_contains(dict(sample))
        if exc is not None:
            raise DmtgError(f"invalid grouping sample {dict(sample)}: {exc}")
        used = sorted({int(sample[name]) for name in self.task_names})
        own = (lambda m: m) if reuse else copy.deepcopy
        banked = self.head_banks is not None  # a head read from a bank is already a standalone copy
        heads = {name: head if banked else own(head) for name, head in self.routers.chosen_heads(sample).items()}
        assignment = {name: used.index(int(sample[name])) for name in self.task_names}
        return GroupedNetwork(
            self.architecture,
            [own(self.branches[k]) for k in used],
            heads,
            assignment,
            branch_ids=used,
            stem=own(self.stem) if self.stem is not None else None,
        )
