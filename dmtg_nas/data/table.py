"""``table``: a CSV or NPZ file with one column (array) per task and the rest as features."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, Field

from ..config import SplitConfig, StrictModel, TaskConfig
from ..errors import DataError, SpecError, suggest
from .base import TaskData, TensorTaskDataset, encode_targets, random_split

__all__ = ["TableDataset", "read_table"]


class TableOptions(StrictModel):
    path: str = Field(min_length=1)  # .csv or .npz
    features: list[str] | None = None  # default: every non-task column
    split: SplitConfig = Field(default_factory=SplitConfig)
    standardize: bool = True  # features and regression targets, with training-split statistics
    delimiter: str = Field(default=",", min_length=1, max_length=1)  # csv only


def read_table(path: Path, delimiter: str = ",") -> dict[str, np.ndarray]:
    """Read a CSV (header row, numeric cells) or an NPZ into ``{column: array (n,) or (n, d)}``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: np.asarray(npz[name]) for name in npz.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable NPZ file ({exc})") from None
    if suffix != ".csv":
        raise DataError(f"{path}: unsupported table format {suffix!r}; use .csv or .npz")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        header = [h.strip() for h in header]
        rows: list[list[float]] = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}: line {line_no} has {len(row)} cells, the header has {len(header)}")
            try:
                rows.append([float(cell) if cell.strip() else float("nan") for cell in row])
            except ValueError:
                col = next(i for i, c in enumerate(row) if not _is_float(c))
                raise DataError(
                    f"{path}: line {line_no}, column {header[col]!r}: {row[col]!r} is not a number"
                ) from None
    if not rows:
        raise DataError(f"{path}: no data rows")
    data = np.asarray(rows, dtype=np.float64)
    return {name: data[:, i] for i, name in enumerate(header)}


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return not cell.strip()
    return True


def _feature_names(columns: Sequence[str], tasks: Sequence[TaskConfig], options: TableOptions) -> list[str]:
    task_names = {t.name for t in tasks}
    for task in tasks:
        if task.name not in columns:
            raise SpecError(
                f"task {task.name!r} has no column in {options.path}{suggest(task.name, columns)}; "
                f"columns: {', '.join(columns)}",
                key="tasks",
            )
    if options.features is None:
        names = [c for c in columns if c not in task_names]
    else:
        names = list(options.features)
        for name in names:
            if name not in columns:
                raise SpecError(
                    f"feature {name!r} is not a column of {options.path}{suggest(name, columns)}",
                    key="dataset.features",
                )
            if name in task_names:
                raise SpecError(f"feature {name!r} is also a task", key="dataset.features")
    if not names:
        raise SpecError(f"{options.path} has no feature columns besides the tasks", key="dataset.features")
    return names


class TableDataset:
    """Tabular multi-task data from a CSV or NPZ file (see :class:`TableOptions`)."""

    Options: ClassVar[type[BaseModel]] = TableOptions

    def check(self, options: TableOptions, tasks: Sequence[TaskConfig]) -> None:
        path = Path(options.path)
        if not path.is_file():
            raise SpecError(f"file not found: {path}", key="dataset.path")
        if path.suffix.lower() not in (".csv", ".npz"):
            raise SpecError(f"unsupported table format {path.suffix!r}; use .csv or .npz", key="dataset.path")
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                header = [h.strip() for h in next(csv.reader(handle, delimiter=options.delimiter), [])]
            _feature_names(header, tasks, options)
        else:
            with np.load(path, allow_pickle=False) as npz:
                _feature_names(list(npz.files), tasks, options)

    def load(self, options: TableOptions, tasks: Sequence[TaskConfig]) -> TaskData:
        path = Path(options.path)
        columns = read_table(path, options.delimiter)
        features = _feature_names(list(columns), tasks, options)
        arrays = [columns[f].reshape(len(columns[f]), -1).astype(np.float64) for f in features]
        n = arrays[0].shape[0]
        for name, arr in zip(features, arrays):
            if arr.shape[0] != n:
                raise DataError(f"{path}: feature {name!r} has {arr.shape[0]} rows, expected {n}")
        x = np.concatenate(arrays, axis=1)
        if not np.all(np.isfinite(x)):
            row, col = map(int, np.argwhere(~np.isfinite(x))[0])
            raise DataError(f"{path}: feature value at row {row}, feature column {col} is missing or not finite")
        train_idx, val_idx, test_idx = random_split(n, options.split)
        info: dict[str, object] = {"path": str(path), "features": features, "samples": n}
        if options.standardize:
            mean, std = x[train_idx].mean(0), x[train_idx].std(0)
            x = (x - mean) / np.where(std > 0, std, 1.0)
        targets: dict[str, torch.Tensor] = {}
        scales: dict[str, list[float]] = {}
        for task in tasks:
            raw = columns[task.name]
            if raw.ndim != 1 or raw.shape[0] != n:
                raise DataError(f"{path}: task {task.name!r} must be one value per row")
            y = encode_targets(task, raw, str(path))
            if task.type == "regression" and options.standardize:
                mu, sd = float(y[train_idx].mean()), float(y[train_idx].std())
                y = (y - mu) / (sd if sd > 0 else 1.0)
                scales[task.name] = [mu, sd]
            targets[task.name] = y
        if scales:
            info["regression_scale"] = scales
        xt = torch.as_tensor(x, dtype=torch.float32)

        def part(idx: np.ndarray) -> TensorTaskDataset:
            index = torch.as_tensor(idx)
            return TensorTaskDataset(xt[index], {k: v[index] for k, v in targets.items()})

        return TaskData(part(train_idx), part(val_idx), part(test_idx), (x.shape[1],), info=info)
