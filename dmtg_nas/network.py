"""The grouped network a search produces: the used branches and one head per task, a plain torch
module that saves, loads and runs without NNI.

Heads that are one plain ``nn.Linear`` on (B, D) features (the default ``heads: {hidden: []}``) run
per branch as one matrix product (:func:`apply_heads`); the saved layout is one module per head.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import BuiltEncoder, build_encoder, build_head
from .errors import DmtgError
from .schema import BackboneConfig, HeadsConfig, TaskConfig

__all__ = ["GroupedNetwork", "apply_heads", "groups_from_sample", "load_model", "plain_linear"]


def plain_linear(head: nn.Module) -> nn.Linear | None:
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

    On a (B, D) tensor, the plain linear heads among them (see :func:`plain_linear`) run as one
    ``F.linear`` with their weights and biases concatenated, split back by their widths; any other
    head (hidden layers, dropout, pooled or dense heads) runs as itself.
    """
    linear = [plain_linear(h) for h in heads] if isinstance(x, Tensor) and x.dim() == 2 else []
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


def groups_from_sample(task_names: Sequence[str], sample: Mapping[str, Any], num_branches: int) -> list[list[str]]:
    """Non-empty groups of a sample, ordered by branch index."""
    groups: list[list[str]] = [[] for _ in range(num_branches)]
    for name in task_names:
        groups[int(sample[name])].append(name)
    return [g for g in groups if g]


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
