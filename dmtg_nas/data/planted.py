"""``planted``: synthetic multi-task data with a known best grouping.

Each planted group g has its own latent transform of the input, ``h_g = tanh(x W_g)`` with
``W_g`` a random (input_dim x latent_dim) map; every task of the group reads its target from
``h_g`` (a random linear read-out plus a random quadratic term), so tasks of one group share all
their features while different groups need different ones. An encoder branch whose width is close to
``latent_dim`` can serve one group well and two groups badly, which makes the planted partition the
one to find. Targets are standardised, then ``noise`` times unit Gaussian noise is added; binary tasks
threshold the noisy signal at 0, multiclass tasks cut it at its quantiles.

With ``relation: opposed``, every second task of a group reads its group's features the other way
(its read-out is the negated read-out of the previous task plus a small own part), like mutually
exclusive attributes: their gradients conflict in sign, yet they gain from one shared encoder.
``image_size: s`` presents the inputs as (1, s, s) images (``input_dim`` must be s*s) for conv
encoders.

Tasks are assigned to groups by a seeded shuffle of the spec's task list, so the order of the
tasks in the spec says nothing about the groups. The partition is returned as ``ground_truth``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from ..catalog.tabular import PlantedOptions, check_planted
from ..schema import TaskConfig
from .base import TaskData, TensorTaskDataset, random_split

__all__ = ["PlantedDataset", "PlantedOptions", "planted_partition"]


def planted_partition(task_names: Sequence[str], group_sizes: Sequence[int], seed: int) -> list[list[str]]:
    """The planted groups: a seeded shuffle of the tasks cut into ``group_sizes``."""
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(task_names))
    groups, start = [], 0
    for size in group_sizes:
        groups.append([task_names[i] for i in sorted(order[start : start + size])])
        start += size
    return groups


class PlantedDataset:
    """Synthetic vector data with a planted task grouping (see the module docstring)."""

    Options: ClassVar[type[BaseModel]] = PlantedOptions

    def check(self, options: PlantedOptions, tasks: Sequence[TaskConfig]) -> None:
        check_planted(options, tasks)

    def load(self, options: PlantedOptions, tasks: Sequence[TaskConfig]) -> TaskData:
        self.check(options, tasks)
        rng = np.random.default_rng(options.seed)
        n, d, m = options.samples, options.input_dim, options.latent_dim
        names = [t.name for t in tasks]
        groups = planted_partition(names, options.group_sizes, options.seed)
        x = rng.standard_normal((n, d))
        signals: dict[str, np.ndarray] = {}
        for group in groups:
            w = rng.standard_normal((d, m)) * (1.5 / np.sqrt(d))
            h = np.tanh(x @ w)  # (n, m): the group's shared features
            previous: tuple[np.ndarray, np.ndarray] | None = None
            for j, name in enumerate(group):
                a = rng.standard_normal(m)
                c = rng.standard_normal(m) / np.sqrt(m)
                if options.relation == "opposed" and j % 2 == 1 and previous is not None:
                    a, c = -previous[0] + 0.3 * a, -previous[1] + 0.3 * c  # reads the features the other way
                previous = (a, c)
                s = h @ a + 0.5 * (h @ c) ** 2
                signals[name] = (s - s.mean()) / (s.std() + 1e-12)
        targets: dict[str, torch.Tensor] = {}
        for task in tasks:
            s = signals[task.name] + options.noise * rng.standard_normal(n)
            if task.type == "regression":
                targets[task.name] = torch.as_tensor(s / np.sqrt(1 + options.noise**2), dtype=torch.float32)
            elif task.type == "binary":
                targets[task.name] = torch.as_tensor(s > 0, dtype=torch.float32)
            else:
                classes = task.num_classes or 2
                cuts = np.quantile(s, np.linspace(0, 1, classes + 1)[1:-1])
                targets[task.name] = torch.as_tensor(np.searchsorted(cuts, s), dtype=torch.int64)
        train_idx, val_idx, test_idx = random_split(n, options.split)
        xt = torch.as_tensor(x, dtype=torch.float32)
        shape: tuple[int, ...] = (d,)
        if options.image_size is not None:
            shape = (1, options.image_size, options.image_size)
            xt = xt.reshape(n, *shape)

        def part(idx: np.ndarray) -> TensorTaskDataset:
            index = torch.as_tensor(idx)
            return TensorTaskDataset(xt[index], {k: v[index] for k, v in targets.items()})

        info = {"samples": n, "planted_groups": groups}
        return TaskData(part(train_idx), part(val_idx), part(test_idx), shape, ground_truth=groups, info=info)
