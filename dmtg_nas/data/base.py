"""What every data set provides: train/val/test splits of ``(x, {task: y})`` and their shapes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.distributed as dist
from pydantic import BaseModel
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from ..errors import DataError
from ..schema import SplitConfig, TaskConfig

__all__ = [
    "TaskData",
    "TensorTaskDataset",
    "DatasetPlugin",
    "ResumableRandomSampler",
    "ShardedBatchSampler",
    "make_loader",
    "default_workers",
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
        if isinstance(index, list):  # a batch: convert the index list once, not once per tensor
            index = torch.as_tensor(index, dtype=torch.long)
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


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches of ``batch_size`` indices, each split between the processes of a distributed run.

    Every process draws the same permutation (same seed), cuts it into the same global batches and
    keeps its contiguous share of each (sizes differ by at most one), so R processes together see
    exactly the batches one process would see with ``batch_size``: the gradient DDP averages is the
    one-process gradient (up to summation order) and the number of steps does not change with R.
    The process's rank and the world size are read from ``torch.distributed`` when iterating (one
    process: the plain ``BatchSampler(RandomSampler(...))`` order). In a distributed run a last
    batch smaller than the world size is dropped (some process would get nothing).
    """

    def __init__(
        self, size: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False, shard: bool = True
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.size = size
        self.shard = shard
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        # the per-sample order (resumable mid-epoch: :mod:`dmtg_nas.runstate` finds it as ``.sampler``)
        self.sampler: Sampler[int] = (
            ResumableRandomSampler(size, self.generator) if shuffle else SequentialSampler(range(size))
        )
        self.batches = BatchSampler(self.sampler, batch_size=batch_size, drop_last=drop_last)

    def _world(self) -> tuple[int, int]:
        if self.shard and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._world()
        last = self.size % self.batch_size
        short = world > 1 and not self.drop_last and 0 < last < world
        return len(self.batches) - int(short)

    def __iter__(self) -> Any:
        rank, world = self._world()
        for batch in self.batches:
            if world == 1:
                yield batch
            elif len(batch) >= world:
                yield [int(i) for i in np.array_split(np.asarray(batch), world)[rank]]


def default_workers(dataset: Dataset[Any], world_size: int = 1) -> int:
    """Loader workers for ``num_workers: auto``: none for in-memory tensors (a batch is one index
    operation), otherwise the CPU cores left per training process, at most 8."""
    if isinstance(dataset, TensorTaskDataset):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cores // max(world_size, 1) - 1))


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int | str = 0,
    drop_last: bool = False,
    loader_cls: Callable[..., DataLoader[Any]] = DataLoader,
    pin_memory: bool = False,
    world_size: int = 1,
    shard: bool = True,
) -> DataLoader[Any]:
    """A DataLoader; in-memory tensor data is fetched a whole batch per index list, file-backed data
    sets (CelebA, Taskonomy) one sample at a time in ``num_workers`` worker processes (``"auto"``:
    :func:`default_workers`).

    Batches come from a :class:`ShardedBatchSampler`: in a distributed run each process loads its
    share of every global batch of ``batch_size``. ``loader_cls`` makes the loader (NNI's evaluator
    passes its traced ``DataLoader``); ``pin_memory`` lets host-to-GPU copies run asynchronously.
    ``world_size`` is the number of training processes (only used for the ``"auto"`` worker count).
    ``shard=False`` gives every process all the batches (work a process does alone, outside the
    distributed training: evaluation, the merge check's group networks, the warm start's inputs).
    """
    workers = default_workers(dataset, world_size) if num_workers == "auto" else int(num_workers)
    size = len(dataset)  # type: ignore[arg-type]
    sampler = ShardedBatchSampler(size, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, shard=shard)
    # the loader's own generator (worker seeds) keeps data loading off the global RNG
    worker_seeds = torch.Generator().manual_seed(seed)
    if isinstance(dataset, TensorTaskDataset):
        return loader_cls(  # type: ignore[no-any-return]
            dataset,
            batch_size=None,
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin_memory,
            generator=worker_seeds,
        )
    return loader_cls(  # type: ignore[no-any-return]
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=worker_seeds,
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
