"""``table``: a CSV or NPZ file with one column (array) per task and the rest as features.

Empty CSV cells read as missing values. A row with a missing or non-finite (NaN, inf) value in a
column the spec uses (a feature or a task target) is an error naming the column and the first bad
rows (``nonfinite: error``, the default), or is left out of every split (``nonfinite: drop``, with a
logged warning that counts the dropped rows).
"""

from __future__ import annotations

import csv
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from ..catalog.tabular import TableOptions, check_table, duplicate_columns, feature_names, first_line
from ..errors import DataError, file_problem
from ..schema import TaskConfig
from .base import TaskData, TensorTaskDataset, encode_targets, random_split

__all__ = ["TableDataset", "TableOptions", "read_table"]

_logger = logging.getLogger(__name__)


def read_table(path: Path, delimiter: str = ",") -> dict[str, np.ndarray]:
    """Read a CSV (header row, numeric cells) or an NPZ into ``{column: array (n,) or (n, d)}``."""
    if (what := file_problem(path)) is not None:
        raise DataError(f"{path}: {what}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not an NPZ file (not a zip archive)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {name: np.asarray(npz[name]) for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a readable NPZ file ({first_line(exc)})") from None
    if suffix != ".csv":
        raise DataError(f"{path}: unsupported table format {suffix!r}; use .csv or .npz")
    try:
        return _read_csv(path, delimiter)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the CSV file ({first_line(exc)})") from None


def _read_csv(path: Path, delimiter: str) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file") from None
        header = [h.strip() for h in header]
        if repeated := duplicate_columns(header):
            raise DataError(f"{path}: {repeated}")
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


def _row_name(path: Path, row: int) -> str:
    """How a data row is named in messages: the CSV line (after the header) or the NPZ row index."""
    return f"line {row + 2}" if path.suffix.lower() == ".csv" else f"row {row}"


def _nonfinite_rows(path: Path, used: dict[str, np.ndarray], policy: str) -> np.ndarray:
    """Boolean mask (n,) of rows to keep; raises for ``policy == "error"`` when a row is bad."""
    n = next(iter(used.values())).shape[0]
    keep = np.ones(n, dtype=bool)
    for name, values in used.items():
        if values.dtype.kind not in "biuf":
            continue  # non-numeric: the target encoder names the column
        bad = ~np.isfinite(values.reshape(n, -1)).all(axis=1)
        if policy == "error" and bad.any():
            rows = np.flatnonzero(bad)
            shown = ", ".join(_row_name(path, int(r)) for r in rows[:5])
            more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
            raise DataError(
                f"{path}: column {name!r} has a missing or non-finite value (NaN, inf) at {shown}{more}; "
                "fix the file or set dataset.nonfinite: drop to leave such rows out"
            )
        keep &= ~bad
    return keep


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return not cell.strip()
    return True


class TableDataset:
    """Tabular multi-task data from a CSV or NPZ file (see :class:`TableOptions`)."""

    Options: ClassVar[type[BaseModel]] = TableOptions

    def check(self, options: TableOptions, tasks: Sequence[TaskConfig]) -> None:
        check_table(options, tasks)

    def load(self, options: TableOptions, tasks: Sequence[TaskConfig]) -> TaskData:
        path = Path(options.path)
        columns = read_table(path, options.delimiter)
        features = feature_names(list(columns), tasks, options)
        for name in features:
            if columns[name].dtype.kind not in "biuf" or columns[name].ndim == 0:
                raise DataError(f"{path}: feature {name!r} must be numeric with one row per sample")
        arrays = [columns[f].reshape(len(columns[f]), -1).astype(np.float64) for f in features]
        n = arrays[0].shape[0]
        for name, arr in zip(features, arrays):
            if arr.shape[0] != n:
                raise DataError(f"{path}: feature {name!r} has {arr.shape[0]} rows, expected {n}")
        for task in tasks:
            raw = columns[task.name]
            if raw.ndim != 1 or raw.shape[0] != n:
                raise DataError(f"{path}: task {task.name!r} must be one value per row")
        used = {**{f: a for f, a in zip(features, arrays)}, **{t.name: columns[t.name] for t in tasks}}
        keep = _nonfinite_rows(path, used, options.nonfinite)
        dropped = int(n - keep.sum())
        if dropped:
            _logger.warning("%s: %d of %d rows have missing or non-finite values; dropped", path, dropped, n)
            if dropped == n:
                raise DataError(f"{path}: every row has a missing or non-finite value; nothing left to train on")
        x = np.concatenate(arrays, axis=1)[keep]
        n = x.shape[0]
        train_idx, val_idx, test_idx = random_split(n, options.split)
        info: dict[str, object] = {"path": str(path), "features": features, "samples": n, "dropped_rows": dropped}
        if options.standardize:
            mean, std = x[train_idx].mean(0), x[train_idx].std(0)
            x = (x - mean) / np.where(std > 0, std, 1.0)
        targets: dict[str, torch.Tensor] = {}
        scales: dict[str, list[float]] = {}
        for task in tasks:
            y = encode_targets(task, columns[task.name][keep], str(path))
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
