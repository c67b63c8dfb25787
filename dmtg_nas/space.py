"""The task-grouping search space as an NNI model space, and the grouped network it freezes to.

The space holds an optional shared stem (``backbone.shared_stem`` stages used by every branch), K
branch encoders and, for every task, K heads (one per branch): K*N heads. Each
task carries one ``nni.mutable.Categorical`` over the K branches, labelled by the task's name, so
``space.simplify()`` lists the N choices and ``space.freeze({task: branch, ...})`` returns the grouped
network: only the branches some task uses and one head per task, as a plain torch module that saves,
loads and runs without NNI.

Heads that are one plain ``nn.Linear`` on (B, D) features (the default ``heads: {hidden: []}``) run
per branch as one matrix product. In the space (and so in the supernet) they are stored that way:
when every task's head is a plain linear layer, the N heads on branch k are one :class:`HeadBank`
(weight (sum of output widths, D), bias), ``head_banks.k`` in the state dict; each router reads its
rows. One tensor per branch instead of 2*N keeps the per-task work of a step (autograd nodes,
gradient accumulation, optimizer state) out of the supernet. The frozen grouped network holds one
``nn.Linear`` per task again (copied from the bank), and concatenates the heads of a branch inside
``forward`` (:func:`apply_heads`); its saved layout is one module per head.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from nni.mutable import Categorical
from nni.nas.nn.pytorch import ModelSpace, MutableModule
from torch import Tensor, nn

from .backbones import BuiltEncoder, FeatureSpec, build_encoder, build_head
from .config import BackboneConfig, HeadsConfig, SearchSpec, TaskConfig
from .errors import DmtgError

__all__ = [
    "TaskRouter",
    "HeadBank",
    "GroupingSpace",
    "GroupedNetwork",
    "load_model",
    "groups_from_sample",
    "apply_heads",
]


def _plain_linear(head: nn.Module) -> nn.Linear | None:
    """The head's ``nn.Linear`` if the head is exactly one (bare or alone in an ``nn.Sequential``),
    with a bias and no module hooks; else None (the head runs as itself)."""
    if type(head) is nn.Sequential and len(head) == 1:
        if head._forward_hooks or head._forward_pre_hooks:
            return None
        head = head[0]
    if type(head) is not nn.Linear or head.bias is None or head._forward_hooks or head._forward_pre_hooks:
        return None
    return head


def apply_heads(heads: Sequence[nn.Module], x: Any) -> list[Tensor]:
    """Every head of ``heads`` on the same branch output ``x``: ``[head(x) for head in heads]``.

    On a (B, D) tensor, the plain linear heads among them (see :func:`_plain_linear`) run as one
    ``F.linear`` with their weights and biases concatenated, split back by their widths; any other
    head (hidden layers, dropout, pooled or dense heads) runs as itself.
    """
    linear = [_plain_linear(h) for h in heads] if isinstance(x, Tensor) and x.dim() == 2 else []
    fused = [i for i, lin in enumerate(linear) if lin is not None]
    if len(fused) < 2:
        return [head(x) for head in heads]
    lins = [cast(nn.Linear, linear[i]) for i in fused]
    weight = torch.cat([lin.weight for lin in lins])
    bias = torch.cat([cast(Tensor, lin.bias) for lin in lins])
    parts = F.linear(x, weight, bias).split([lin.out_features for lin in lins], dim=-1)
    out: list[Tensor | None] = [None] * len(heads)
    for i, part in zip(fused, parts):
        out[i] = part
    return [o if o is not None else head(x) for o, head in zip(out, heads)]


class HeadBank(nn.Module):
    """The plain linear heads of all N tasks on one branch as one layer: ``weight`` (sum of the
    tasks' output widths, D) and ``bias``; task i's head is rows ``offsets[i]:offsets[i + 1]``.

    Built from the heads it replaces (their values are copied, so a bank starts where they were);
    :meth:`head` gives task i's head back as a standalone module of the same structure.
    """

    def __init__(self, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        linears = [_plain_linear(h) for h in heads]
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


class _Heads:
    """A task's K heads, held either as modules (``heads``, an ``nn.ModuleList``) or as its rows of
    the space's per-branch :class:`HeadBank` s (``banks``, not registered here: the space owns them)."""

    heads: nn.ModuleList | None
    banks: list[HeadBank] | None
    bank_index: int

    @property
    def num_branches(self) -> int:
        return len(self.banks) if self.banks is not None else len(cast(nn.ModuleList, self.heads))

    def head(self, k: int) -> nn.Module:
        """The head on branch k: the module itself, or with banks a standalone copy of its rows."""
        if self.banks is not None:
            return self.banks[k].head(self.bank_index)
        return cast(nn.ModuleList, self.heads)[k]

    def predict(self, k: int, x: Any) -> Tensor:
        """The head on branch k applied to that branch's output."""
        if self.banks is not None:
            return self.banks[k].predict(self.bank_index, x)
        return cast(nn.ModuleList, self.heads)[k](x)  # type: ignore[no-any-return]

    def _take_heads(self, other: _Heads) -> None:
        self.heads = other.heads
        self.banks = other.banks
        self.bank_index = other.bank_index


class TaskRouter(_Heads, MutableModule):
    """One task's K heads and its choice of branch (``Categorical(range(K), label=task)``)."""

    def __init__(self, task: str, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.task = task
        self.choice = self.add_mutable(Categorical(list(range(len(heads))), label=task))
        self.heads = nn.ModuleList(heads)
        self.banks = None
        self.bank_index = -1

    def use_banks(self, banks: Sequence[HeadBank], index: int) -> None:
        """Read the heads from row block ``index`` of ``banks`` (built from this router's heads),
        dropping the modules."""
        del self.heads
        self.heads = None
        self.banks = list(banks)
        self.bank_index = index

    @property
    def label(self) -> str:
        return str(self.choice.label)

    def forward(self, feats: Sequence[Any]) -> Tensor:
        """Outside a search, route to the default (first) branch: one branch output per branch
        ((B, D) or a list of maps) -> the head's output."""
        k = int(self.choice.default())
        return self.predict(k, feats[k])

    def freeze(self, sample: Mapping[str, Any]) -> nn.Module:
        return self.head(int(self.choice.freeze(sample)))


def groups_from_sample(task_names: Sequence[str], sample: Mapping[str, Any], num_branches: int) -> list[list[str]]:
    """Non-empty groups of a sample, ordered by branch index."""
    groups: list[list[str]] = [[] for _ in range(num_branches)]
    for name in task_names:
        groups[int(sample[name])].append(name)
    return [g for g in groups if g]


class GroupingSpace(ModelSpace):
    """K branches, K*N heads, one Categorical per task (see the module docstring).

    Args:
        tasks: the N tasks.
        num_branches: K.
        backbone: the branch encoder's config (``mlp`` or ``timm:<name>``).
        heads: the head config.
        input_shape: shape of one input sample.
        branch_init: ``copy`` starts all K branches (and the K heads of a task) from identical
            weights, as the method's reference code does; ``independent`` initialises each separately.
        fuse_heads: store the heads as one :class:`HeadBank` per branch when every head is a plain
            linear layer on vector features (the values are the same as without; False keeps one
            module per head).
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
    ) -> None:
        super().__init__()
        if num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {num_branches}")
        self.tasks = list(tasks)
        self.num_branches = num_branches
        self.architecture = {
            "tasks": [t.model_dump(mode="json") for t in tasks],
            "backbone": backbone.model_dump(mode="json"),
            "heads": heads.model_dump(mode="json"),
            "input_shape": list(input_shape),
        }
        shape = tuple(input_shape)
        maps = any(t.dense for t in tasks)
        first = build_encoder(backbone, shape, maps=maps)
        self.stem = first.stem  # shared by all branches (None: fully separate branches)
        branches = [first.branch] + [
            copy.deepcopy(first.branch) if branch_init == "copy" else build_encoder(backbone, shape, maps=maps).branch
            for _ in range(num_branches - 1)
        ]
        self.branches = nn.ModuleList(branches)
        self.features: FeatureSpec = first.features
        out_size = (shape[-2], shape[-1]) if len(shape) == 3 else None
        routers = []
        for task in tasks:
            head = build_head(task, first.features, heads, out_size)
            task_heads = [head] + [
                copy.deepcopy(head) if branch_init == "copy" else build_head(task, first.features, heads, out_size)
                for _ in range(num_branches - 1)
            ]
            routers.append(TaskRouter(task.name, task_heads))
        self.routers = nn.ModuleList(routers)
        plain = first.features.kind == "vector" and all(
            _plain_linear(h) is not None for r in routers for h in cast(nn.ModuleList, r.heads)
        )
        self.head_banks: nn.ModuleList | None = None
        if fuse_heads and plain:
            banks = [HeadBank([cast(nn.ModuleList, r.heads)[k] for r in routers]) for k in range(num_branches)]
            self.head_banks = nn.ModuleList(banks)
            for i, router in enumerate(routers):
                router.use_banks(banks, i)

    @classmethod
    def from_spec(cls, spec: SearchSpec, input_shape: Sequence[int]) -> GroupingSpace:
        return cls(spec.tasks, spec.groups, spec.backbone, spec.heads, input_shape, spec.strategy.init.branches)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def forward(self, x: Tensor) -> dict[str, Any]:
        """The stem once, all K branches once, then every task's heads: ``{task: output}``.

        Unmutated, each task uses its default branch's head. Routers that offer ``route_preds`` (the
        search strategy's supernet routers) get their K heads' predictions, computed per branch (one
        matrix product per :class:`HeadBank`, else :func:`apply_heads`), and return the task's output
        from them; with head banks, a router class offering ``route_bank`` routes all tasks at once
        from the (K, B, W) tensor of every prediction. Other routers run as themselves.
        """
        h = self.stem(x) if self.stem is not None else x
        feats = [branch(h) for branch in self.branches]  # K x (B, D), or K x [(B, C_j, H_j, W_j), ...]
        routers = list(self.routers)
        banks = cast(list[HeadBank], list(self.head_banks)) if self.head_banks is not None else None
        if all(type(r) is TaskRouter for r in routers):
            chosen = [int(cast(TaskRouter, r).choice.default()) for r in routers]
            preds: list[Tensor | None] = [None] * len(routers)
            for k in sorted(set(chosen)):
                idx = [i for i, c in enumerate(chosen) if c == k]
                if banks is not None:
                    every = banks[k](feats[k])
                    for i in idx:
                        preds[i] = every[i]
                    continue
                heads = [cast(nn.ModuleList, cast(TaskRouter, routers[i]).heads)[k] for i in idx]
                for i, pred in zip(idx, apply_heads(heads, feats[k])):
                    preds[i] = pred
            return {task.name: pred for task, pred in zip(self.tasks, preds)}
        if routers and all(callable(getattr(r, "route_preds", None)) for r in routers):
            route_bank = getattr(type(routers[0]), "route_bank", None)
            if banks is not None and route_bank is not None and all(type(r) is type(routers[0]) for r in routers):
                # every head's prediction as one (K, B, W) tensor, all routers' samples at once
                every = torch.stack([bank.matrix(f) for bank, f in zip(banks, feats)])
                return dict(zip(self.task_names, route_bank(routers, every, banks[0].offsets)))
            per_branch: list[list[Tensor]]
            if banks is not None:
                per_branch = [bank(f) for bank, f in zip(banks, feats)]
            else:
                lists = [cast(nn.ModuleList, r.heads) for r in routers]
                per_branch = [apply_heads([hs[k] for hs in lists], f) for k, f in enumerate(feats)]
            return {
                task.name: cast(Any, router).route_preds([branch[i] for branch in per_branch])
                for i, (task, router) in enumerate(zip(self.tasks, routers))
            }
        return {task.name: router(feats) for task, router in zip(self.tasks, self.routers)}

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
        heads = {}
        for task, router in zip(self.tasks, self.routers):
            head = cast(TaskRouter, router).freeze(sample)
            # a head read from a bank is already a standalone copy of its rows
            heads[task.name] = head if cast(TaskRouter, router).banks is not None else own(head)
        assignment = {name: used.index(int(sample[name])) for name in self.task_names}
        return GroupedNetwork(
            self.architecture,
            [own(self.branches[k]) for k in used],
            heads,
            assignment,
            branch_ids=used,
            stem=own(self.stem) if self.stem is not None else None,
        )


class GroupedNetwork(nn.Module):
    """The searched model: the used branches and one head per task, a plain torch module.

    ``forward(x)`` returns ``{task: head output}`` ((B, 1), (B, C) or (B, C, H, W) for dense tasks).
    ``assignment`` maps each task to its branch position in ``branches``; ``branch_ids`` are those
    branches' indices in the space; ``stem`` is the shared stem (None without one).
    """

    def __init__(
        self,
        architecture: Mapping[str, Any],
        branches: Sequence[nn.Module],
        heads: Mapping[str, nn.Module],
        assignment: Mapping[str, int],
        branch_ids: Sequence[int] | None = None,
        stem: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.architecture = dict(architecture)
        self.stem = stem
        self.task_names = [t["name"] for t in self.architecture["tasks"]]
        self.branches = nn.ModuleList(branches)
        self.heads = nn.ModuleList([heads[name] for name in self.task_names])
        self.assignment = {name: int(assignment[name]) for name in self.task_names}
        self.branch_ids = list(branch_ids) if branch_ids is not None else list(range(len(branches)))

    @property
    def groups(self) -> list[list[str]]:
        return [[t for t in self.task_names if self.assignment[t] == b] for b in range(len(self.branches))]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """The stem, each used branch once, then the heads of each branch's tasks (:func:`apply_heads`)."""
        h = self.stem(x) if self.stem is not None else x
        feats = [branch(h) for branch in self.branches]  # one output per used branch
        heads = dict(zip(self.task_names, self.heads))
        preds: dict[str, Tensor] = {}
        for group, f in zip(self.groups, feats):
            preds.update(zip(group, apply_heads([heads[name] for name in group], f)))
        return {name: preds[name] for name in self.task_names}

    @classmethod
    def from_architecture(
        cls, architecture: Mapping[str, Any], assignment: Mapping[str, int], branch_ids: Sequence[int] | None = None
    ) -> GroupedNetwork:
        """A freshly initialised grouped network (used to load saved weights and to retrain)."""
        tasks = [TaskConfig.model_validate(t) for t in architecture["tasks"]]
        backbone = BackboneConfig.model_validate(architecture["backbone"])
        heads_cfg = HeadsConfig.model_validate(architecture["heads"])
        shape = tuple(architecture["input_shape"])
        n_branches = max(assignment.values()) + 1
        maps = any(t.dense for t in tasks)
        built: list[BuiltEncoder] = [build_encoder(backbone, shape, maps=maps) for _ in range(n_branches)]
        features = built[0].features
        out_size = (shape[-2], shape[-1]) if len(shape) == 3 else None
        heads = {t.name: build_head(t, features, heads_cfg, out_size) for t in tasks}
        return cls(architecture, [b.branch for b in built], heads, assignment, branch_ids, stem=built[0].stem)

    def save(self, path: str | Path) -> None:
        """Write architecture and weights to one file (loadable with ``weights_only=True``)."""
        torch.save(
            {
                "format": "dmtg-nas/grouped-network/1",
                "architecture": self.architecture,
                "assignment": self.assignment,
                "branch_ids": self.branch_ids,
                "state_dict": self.state_dict(),
            },
            path,
        )


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> GroupedNetwork:
    """Load a grouped network saved by :meth:`GroupedNetwork.save` (no NNI needed)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise DmtgError(f"{path}: no saved grouped network here")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: never fall back to full pickle
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise DmtgError(
            f"{path}: not a readable grouped-network file: it holds pickled Python objects{what}, which are never "
            "loaded (the format is tensors and plain data only)"
        ) from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DmtgError(f"{path}: not a readable grouped-network file ({first})") from None
    if not isinstance(blob, dict) or blob.get("format") != "dmtg-nas/grouped-network/1":
        raise DmtgError(f"{path}: not a dmtg-nas grouped-network file")
    net = GroupedNetwork.from_architecture(blob["architecture"], blob["assignment"], blob["branch_ids"])
    net.load_state_dict(blob["state_dict"])
    return net
