"""What every data set provides: train/val/test splits of ``(x, {task: y})`` and their shapes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from ..config import SplitConfig, TaskConfig
from ..errors import DataError

__all__ = [
    "TaskData",
    "TensorTaskDataset",
    "DatasetPlugin",
    "ResumableRandomSampler",
    "make_loader",
    "random_split",
    "encode_targets",
]

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


class TensorTaskDataset(Dataset[Batch]):
    """In-memory multi-task data: inputs ``x`` of shape (n, ...) and one target tensor per task.

    Indexing with a list of indices returns a whole batch at once (used by :func:`make_loader`),
    which keeps the per-sample Python overhead out of small-tabular training.
    """

    def __init__(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> None:
        n = x.shape[0]
        for name, y in targets.items():
            if y.shape[0] != n:
                raise DataError(f"task {name!r} has {y.shape[0]} targets for {n} inputs")
        self.x = x
        self.targets = dict(targets)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: Any) -> Batch:
        return self.x[index], {name: y[index] for name, y in self.targets.items()}


@dataclass
class TaskData:
    """The splits of one data set, ready for training.

    Attributes:
        train, val, test: datasets yielding ``(x, {task: y})``; y is float (regression, binary)
            or long (multiclass), one value per sample.
        input_shape: shape of one input, e.g. ``(32,)`` or ``(3, 64, 64)``.
        ground_truth: the known best partition of the tasks, when the data set has one (planted).
        info: anything worth recording in the run's outputs (normalisation statistics, sizes).
        tasks: the task definitions, when the data set supplies them (user data sets).
    """

    train: Dataset[Any]
    val: Dataset[Any]
    test: Dataset[Any]
    input_shape: tuple[int, ...]
    ground_truth: list[list[str]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    tasks: list[Any] | None = None

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in ("train", "val", "test")}  # type: ignore[arg-type]


class DatasetPlugin(Protocol):
    """A registered data set: an options model, a cheap ``check`` and the ``load`` itself."""

    Options: ClassVar[type[BaseModel]]

    def check(self, options: Any, tasks: Sequence[TaskConfig]) -> None:
        """Validate options against files and tasks without loading everything (``dmtg validate``)."""

    def load(self, options: Any, tasks: Sequence[TaskConfig]) -> TaskData:
        """Read or generate the data and return its splits."""


class ResumableRandomSampler(Sampler[int]):
    """A random permutation per epoch from one seeded generator, resumable in the middle of an epoch.

    Draws exactly what ``RandomSampler(data, generator=generator)`` draws (the same orders), and
    also remembers the generator's state at the start of the current epoch, so that a run resumed
    from a checkpoint can replay the epoch's order and skip the samples already trained on
    (:meth:`state_dict`, :meth:`resume`).
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = size
        self.generator = generator
        self._epoch_start = generator.get_state()
        self._replay: torch.Tensor | None = None  # generator state to restore at the next epoch's start
        self._skip = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if self._replay is not None:
            self.generator.set_state(self._replay)
            self._replay = None
        self._epoch_start = self.generator.get_state()
        order = torch.randperm(self.size, generator=self.generator).tolist()
        torch.randperm(self.size, generator=self.generator)  # RandomSampler draws a second (empty) slice
        skip, self._skip = self._skip, 0
        yield from order[skip:]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generator states at the start of the current epoch and now."""
        return {"epoch_start": self._epoch_start.clone(), "now": self.generator.get_state()}

    def resume(self, state: Mapping[str, torch.Tensor], skip: int) -> None:
        """Continue from ``state``: at the next epoch when ``skip == 0``, else ``skip`` samples into
        the epoch that was running."""
        if skip > 0:
            self._replay = state["epoch_start"].clone()
            self._skip = skip
        else:
            self.generator.set_state(state["now"].clone())
            self._replay, self._skip = None, 0


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    traced: bool = True,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    """A DataLoader; in-memory tensor data is fetched a whole batch per index list, file-backed data
    sets (CelebA, Taskonomy) one sample at a time in ``num_workers`` worker processes.

    ``traced`` returns NNI's traced ``DataLoader`` (needed by NNI's Lightning evaluator);
    ``pin_memory`` speeds up host-to-GPU copies.
    """
    if traced:
        from nni.nas.evaluator.pytorch import DataLoader as loader_cls
    else:
        loader_cls = DataLoader
    generator = torch.Generator().manual_seed(seed)
    order: Sampler[int] = (
        ResumableRandomSampler(len(dataset), generator)  # type: ignore[arg-type]
        if shuffle
        else SequentialSampler(dataset)  # type: ignore[arg-type]
    )
    if isinstance(dataset, TensorTaskDataset):
        sampler = BatchSampler(order, batch_size=batch_size, drop_last=drop_last)
        # the loader's own generator (worker seeds) keeps data loading off the global RNG
        return loader_cls(  # type: ignore[no-any-return]
            dataset,
            batch_size=None,
            sampler=sampler,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed),
        )
    return loader_cls(  # type: ignore[no-any-return]
        dataset,
        batch_size=batch_size,
        sampler=order,
        generator=generator,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


def random_split(n: int, split: SplitConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a seeded random train/val/test split of ``n`` samples."""
    rng = np.random.default_rng(split.seed)
    order = rng.permutation(n)
    n_test = round(split.test * n)
    n_val = round(split.val * n)
    if n - n_test - n_val < 1:
        raise DataError(f"{n} samples leave nothing to train on with val={split.val}, test={split.test}")
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def encode_targets(task: TaskConfig, values: np.ndarray, where: str) -> torch.Tensor:
    """Check and convert one task's raw target column.

    regression -> float32; binary -> float32 0/1 (accepts 0/1, -1/1, true/false);
    multiclass -> int64 in [0, num_classes).
    """
    values = np.asarray(values)
    if values.dtype.kind not in "biuf":
        raise DataError(f"{where}: task {task.name!r} has non-numeric targets (dtype {values.dtype})")
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise DataError(f"{where}: task {task.name!r} has a non-finite target at row {bad}")
    if task.type == "regression":
        return torch.as_tensor(values, dtype=torch.float32)
    if task.type == "binary":
        levels = set(np.unique(values).tolist())
        if levels <= {0, 1}:
            return torch.as_tensor(values, dtype=torch.float32)
        if levels <= {-1, 1}:
            return torch.as_tensor(values > 0, dtype=torch.float32)
        raise DataError(
            f"{where}: binary task {task.name!r} needs targets in {{0, 1}} or {{-1, 1}}, found {sorted(levels)[:6]}"
        )
    if np.any(values != np.round(values)):
        raise DataError(f"{where}: multiclass task {task.name!r} has non-integer targets")
    classes = task.num_classes or 0
    if values.min() < 0 or values.max() >= classes:
        raise DataError(
            f"{where}: multiclass task {task.name!r} needs targets in [0, {classes}), "
            f"found {int(values.min())}..{int(values.max())}"
        )
    return torch.as_tensor(values, dtype=torch.int64)
