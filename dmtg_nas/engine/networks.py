"""The networks every training builds: K branch encoders and K heads per task, from one factory.

:func:`build_parts` makes the stem, the K branches and the K*N heads in one fixed order, so that one
seed gives the same weights whether they become the search's supernet
(:class:`~dmtg_nas.nni.space.GroupingSpace`) or a plain network; :func:`plain_network` keeps the
parts of one grouping as a :class:`~dmtg_nas.network.GroupedNetwork` (the network of a partition
trained from scratch, a subset network, the warm start's single-task networks).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..backbones import FeatureSpec, build_encoder, build_head
from ..network import GroupedNetwork
from ..schema import BackboneConfig, HeadsConfig, SearchSpec, TaskConfig

__all__ = ["NetworkParts", "build_parts", "init_weights", "partition_network", "plain_network"]

_XAVIER_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def init_weights(module: nn.Module | None, weights: str = "default") -> nn.Module | None:
    """Initialise ``module`` in place by ``strategy.init.weights``: ``default`` leaves it as built;
    ``xavier`` draws every linear and convolution weight with ``xavier_uniform_`` and zeroes their
    biases (as DMTG's CelebA code does); normalisation layers keep theirs. Returns ``module``."""
    if module is None or weights == "default":
        return module
    if weights != "xavier":
        raise ValueError(f"weights must be 'default' or 'xavier', got {weights!r}")
    for layer in module.modules():
        if isinstance(layer, _XAVIER_LAYERS):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


@dataclass
class NetworkParts:
    """The stem (shared; None without one), K branches and, per task, its K heads (``heads[i][k]``:
    task i's head on branch k), with what a branch returns and the architecture record that saved
    networks carry."""

    architecture: dict[str, Any]
    stem: nn.Module | None
    branches: list[nn.Module]
    heads: list[list[nn.Module]]
    features: FeatureSpec


def build_parts(
    tasks: Sequence[TaskConfig],
    num_branches: int,
    backbone: BackboneConfig,
    heads: HeadsConfig,
    input_shape: Sequence[int],
    branch_init: str = "copy",
    weights: str = "default",
) -> NetworkParts:
    """Build the parts in the fixed order: the first encoder (stem and branch), the other K - 1
    branches, then each task's K heads. ``copy`` starts every branch (and every head of a task) from
    identical weights, as the method's reference code does; ``independent`` initialises each one.
    ``weights``: :func:`init_weights` of each part as it is built (copies are made after it)."""
    if num_branches < 1:
        raise ValueError(f"num_branches must be >= 1, got {num_branches}")
    shape = tuple(input_shape)
    maps = any(t.dense for t in tasks)
    first = build_encoder(backbone, shape, maps=maps)
    init_weights(first.stem, weights)
    init_weights(first.branch, weights)

    def new_branch() -> nn.Module:
        return init_weights(build_encoder(backbone, shape, maps=maps).branch, weights)  # type: ignore[return-value]

    branches = [first.branch] + [
        copy.deepcopy(first.branch) if branch_init == "copy" else new_branch() for _ in range(num_branches - 1)
    ]
    out_size = (shape[-2], shape[-1]) if len(shape) == 3 else None

    def new_head(task: TaskConfig) -> nn.Module:
        return init_weights(build_head(task, first.features, heads, out_size), weights)  # type: ignore[return-value]

    task_heads = []
    for task in tasks:
        head = new_head(task)
        task_heads.append(
            [head] + [copy.deepcopy(head) if branch_init == "copy" else new_head(task) for _ in range(num_branches - 1)]
        )
    architecture = {
        "tasks": [t.model_dump(mode="json") for t in tasks],
        "backbone": backbone.model_dump(mode="json"),
        "heads": heads.model_dump(mode="json"),
        "input_shape": list(input_shape),
    }
    return NetworkParts(architecture, first.stem, branches, task_heads, first.features)


def plain_network(
    tasks: Sequence[TaskConfig],
    backbone: BackboneConfig,
    heads: HeadsConfig,
    input_shape: Sequence[int],
    assignment: Mapping[str, int],
    num_branches: int | None = None,
    weights: str = "default",
) -> GroupedNetwork:
    """A freshly initialised grouped network: task ``t`` on branch ``assignment[t]`` of
    ``num_branches`` (default: as many as the assignment names), every part initialised
    independently; the branches no task uses are built (the random stream is that of the whole
    K-branch network) and dropped. ``weights``: ``strategy.init.weights`` (:func:`init_weights`)."""
    k = num_branches if num_branches is not None else max(int(b) for b in assignment.values()) + 1
    parts = build_parts(tasks, k, backbone, heads, input_shape, "independent", weights)
    used = sorted({int(assignment[t.name]) for t in tasks})
    return GroupedNetwork(
        parts.architecture,
        [parts.branches[b] for b in used],
        {t.name: parts.heads[i][int(assignment[t.name])] for i, t in enumerate(tasks)},
        {t.name: used.index(int(assignment[t.name])) for t in tasks},
        branch_ids=used,
        stem=parts.stem,
    )


def partition_network(spec: SearchSpec, groups: Sequence[Sequence[str]], input_shape: Sequence[int]) -> GroupedNetwork:
    """The spec's network of a partition of its tasks (group i on branch i), freshly initialised."""
    assignment = {t: i for i, g in enumerate(groups) for t in g}
    return plain_network(
        spec.tasks, spec.backbone, spec.heads, input_shape, assignment, weights=spec.strategy.init.weights
    )
