"""The task-grouping search space as an NNI model space, and the grouped network it freezes to.

The space holds an optional shared stem (``backbone.shared_stem`` stages used by every branch), K
branch encoders and, for every task, K heads (one per branch): K*N heads. Each
task carries one ``nni.mutable.Categorical`` over the K branches, labelled by the task's name, so
``space.simplify()`` lists the N choices and ``space.freeze({task: branch, ...})`` returns the grouped
network: only the branches some task uses and one head per task, as a plain torch module that saves,
loads and runs without NNI.

Heads that are one plain ``nn.Linear`` on (B, D) features (the default ``heads: {hidden: []}``) run
per branch as one matrix product (:func:`apply_heads`), in the space, the supernet and the grouped
network: the weights and biases of the heads on a branch are concatenated inside ``forward``, so the
parameters, their names and the saved layout stay one ``nn.Linear`` per head, and gradients reach each
head's own weights.
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

__all__ = ["TaskRouter", "GroupingSpace", "GroupedNetwork", "load_model", "groups_from_sample", "apply_heads"]


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


class TaskRouter(MutableModule):
    """One task's K heads and its choice of branch (``Categorical(range(K), label=task)``)."""

    def __init__(self, task: str, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.task = task
        self.choice = self.add_mutable(Categorical(list(range(len(heads))), label=task))
        self.heads = nn.ModuleList(heads)

    @property
    def label(self) -> str:
        return str(self.choice.label)

    def forward(self, feats: Sequence[Any]) -> Tensor:
        """Outside a search, route to the default (first) branch: one branch output per branch
        ((B, D) or a list of maps) -> the head's output."""
        k = int(self.choice.default())
        return self.heads[k](feats[k])  # type: ignore[no-any-return]

    def freeze(self, sample: Mapping[str, Any]) -> nn.Module:
        return self.heads[int(self.choice.freeze(sample))]


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
    """

    def __init__(
        self,
        tasks: Sequence[TaskConfig],
        num_branches: int,
        backbone: BackboneConfig,
        heads: HeadsConfig,
        input_shape: Sequence[int],
        branch_init: str = "copy",
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

    @classmethod
    def from_spec(cls, spec: SearchSpec, input_shape: Sequence[int]) -> GroupingSpace:
        return cls(spec.tasks, spec.groups, spec.backbone, spec.heads, input_shape, spec.strategy.init.branches)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def forward(self, x: Tensor) -> dict[str, Any]:
        """The stem once, all K branches once, then every task's heads: ``{task: output}``.

        Unmutated, each task uses its default branch's head. Routers that offer ``route_preds`` (the
        search strategy's supernet routers) get their K heads' predictions, computed per branch with
        :func:`apply_heads`, and return the task's output from them; other routers run as themselves.
        """
        h = self.stem(x) if self.stem is not None else x
        feats = [branch(h) for branch in self.branches]  # K x (B, D), or K x [(B, C_j, H_j, W_j), ...]
        routers = list(self.routers)
        if all(type(r) is TaskRouter for r in routers):
            chosen = [int(cast(TaskRouter, r).choice.default()) for r in routers]
            preds: list[Tensor | None] = [None] * len(routers)
            for k in sorted(set(chosen)):
                idx = [i for i, c in enumerate(chosen) if c == k]
                for i, pred in zip(idx, apply_heads([cast(TaskRouter, routers[i]).heads[k] for i in idx], feats[k])):
                    preds[i] = pred
            return {task.name: pred for task, pred in zip(self.tasks, preds)}
        if routers and all(callable(getattr(r, "route_preds", None)) for r in routers):
            heads = [cast(nn.ModuleList, r.heads) for r in routers]
            per_branch = [apply_heads([hs[k] for hs in heads], f) for k, f in enumerate(feats)]
            return {
                task.name: cast(Any, router).route_preds([branch[i] for branch in per_branch])
                for i, (task, router) in enumerate(zip(self.tasks, routers))
            }
        return {task.name: router(feats) for task, router in zip(self.tasks, self.routers)}

    def freeze(self, sample: Mapping[str, Any]) -> GroupedNetwork:  # type: ignore[override]
        """The grouped network for ``sample`` (``{task: branch index}``), keeping the weights."""
        exc = self.check_contains(dict(sample))
        if exc is not None:
            raise DmtgError(f"invalid grouping sample {dict(sample)}: {exc}")
        used = sorted({int(sample[name]) for name in self.task_names})
        heads = {task.name: cast(TaskRouter, router).freeze(sample) for task, router in zip(self.tasks, self.routers)}
        assignment = {name: used.index(int(sample[name])) for name in self.task_names}
        net = GroupedNetwork(
            self.architecture,
            [copy.deepcopy(self.branches[k]) for k in used],
            {name: copy.deepcopy(head) for name, head in heads.items()},
            assignment,
            branch_ids=used,
            stem=copy.deepcopy(self.stem) if self.stem is not None else None,
        )
        return net


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
