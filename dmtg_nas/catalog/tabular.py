"""The vector data sets a spec can name, as the spec layer sees them: ``table``, ``planted`` and
``digits`` (their options and checks; :mod:`dmtg_nas.data` loads them)."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError, allowed, file_problem, suggest
from ..schema import MAX_WIDTH, Seed, SplitConfig, StrictModel, TaskConfig, Width

__all__ = [
    "DIGIT_ATTRIBUTES",
    "DigitsOptions",
    "PlantedOptions",
    "TableOptions",
    "check_digits",
    "check_planted",
    "check_table",
    "duplicate_columns",
    "feature_names",
    "first_line",
    "table_columns",
]


# ----------------------------------------------------------------------------------------------
# table: a CSV or NPZ file
# ----------------------------------------------------------------------------------------------


class TableOptions(StrictModel):
    path: str = Field(min_length=1)  # .csv or .npz
    features: list[str] | None = None  # default: every non-task column
    split: SplitConfig = Field(default_factory=SplitConfig)
    standardize: bool = True  # features and regression targets, with training-split statistics
    delimiter: str = Field(default=",", min_length=1, max_length=1)  # csv only
    nonfinite: Literal["error", "drop"] = "error"  # rows with missing/NaN/inf values in used columns


def check_table(options: TableOptions, tasks: Sequence[TaskConfig]) -> None:
    path = Path(options.path)
    if (what := file_problem(path)) is not None:
        raise SpecError(f"{what}: {path}", key="dataset.path")
    if path.suffix.lower() not in (".csv", ".npz"):
        raise SpecError(f"unsupported table format {path.suffix!r}; use .csv or .npz", key="dataset.path")
    columns = table_columns(path, options.delimiter)
    if not columns:
        raise SpecError(f"{path}: empty file (no header row)", key="dataset.path")
    feature_names(columns, tasks, options)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def table_columns(path: Path, delimiter: str) -> list[str]:
    """The column names of a table file, reading only its header (CSV) or index (NPZ); a CSV
    header may not name a column twice."""
    header = _columns(path, delimiter)
    if repeated := duplicate_columns(header):
        raise SpecError(f"{path}: {repeated}", key="dataset.path")
    return header


def _columns(path: Path, delimiter: str) -> list[str]:
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return [h.strip() for h in next(csv.reader(handle, delimiter=delimiter), [])]
        if not zipfile.is_zipfile(path):
            raise SpecError(f"{path}: not an NPZ file (not a zip archive)", key="dataset.path")
        return npz_columns(path)
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a UTF-8 text file (byte {exc.start})", key="dataset.path") from None
    except (OSError, ValueError, EOFError, csv.Error, zipfile.BadZipFile) as exc:
        kind = "CSV" if path.suffix.lower() == ".csv" else "NPZ"
        raise SpecError(f"{path}: not a readable {kind} file ({first_line(exc)})", key="dataset.path") from None


def duplicate_columns(header: Sequence[str]) -> str:
    """``""`` when every column name is unique, else what repeats and where (1-based), e.g.
    ``"duplicate column names in the header: 'a' (columns 1, 3)"``: a column read by name would
    silently be the last of its namesakes."""
    where: dict[str, list[int]] = {}
    for i, name in enumerate(header, start=1):
        where.setdefault(name, []).append(i)
    repeated = [f"{name!r} (columns {', '.join(map(str, cols))})" for name, cols in where.items() if len(cols) > 1]
    return f"duplicate column names in the header: {', '.join(repeated)}" if repeated else ""


def npz_columns(path: Path) -> list[str]:
    """Array names of an NPZ, reading only each array's header; an array of Python objects (which
    only pickle could read) is refused here, before anything is loaded."""
    names = []
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            name = member[: -len(".npy")]
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                _, _, dtype = read(handle)
            if dtype.hasobject:
                raise SpecError(
                    f"{path}: array {name!r} holds Python objects (pickled data), which are never loaded; "
                    "store numeric arrays",
                    key="dataset.path",
                )
            names.append(name)
    return names


def feature_names(columns: Sequence[str], tasks: Sequence[TaskConfig], options: TableOptions) -> list[str]:
    task_names = {t.name for t in tasks}
    for i, task in enumerate(tasks):
        if task.name not in columns:
            raise SpecError(
                f"task {task.name!r} has no column in {options.path}{suggest(task.name, columns)}; "
                f"columns: {', '.join(columns)}",
                key=f"tasks[{i}].name",
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


# ----------------------------------------------------------------------------------------------
# planted: synthetic data with a known grouping
# ----------------------------------------------------------------------------------------------


class PlantedOptions(StrictModel):
    group_sizes: list[Annotated[int, Field(ge=1, le=10_000)]] = Field(default_factory=lambda: [2, 3, 4], min_length=1)
    input_dim: Width = 32
    latent_dim: Width = 8
    noise: float = Field(default=0.1, ge=0)
    samples: int = Field(default=4000, ge=10, le=10_000_000)
    seed: Seed = 0
    split: SplitConfig = Field(default_factory=lambda: SplitConfig(val=0.2, test=0.2))
    relation: Literal["random", "opposed"] = "random"  # opposed: every second task of a group ~ -previous
    image_size: int | None = Field(default=None, ge=2, le=MAX_WIDTH)  # inputs as (1, s, s); input_dim = s*s


def check_planted(options: PlantedOptions, tasks: Sequence[TaskConfig]) -> None:
    if options.image_size is not None and options.image_size**2 != options.input_dim:
        raise SpecError(
            f"image_size {options.image_size} needs input_dim {options.image_size**2}, got {options.input_dim}",
            key="dataset.input_dim",
        )
    total = sum(options.group_sizes)
    if total != len(tasks):
        raise SpecError(
            f"group sizes {options.group_sizes} add up to {total} tasks, but the spec lists {len(tasks)}",
            key="dataset.group_sizes",
        )


# ----------------------------------------------------------------------------------------------
# digits: scikit-learn's handwritten digits with derived attributes
# ----------------------------------------------------------------------------------------------

DIGIT_ATTRIBUTES: dict[str, frozenset[int]] = {
    "even": frozenset({0, 2, 4, 6, 8}),
    "greater_than_4": frozenset({5, 6, 7, 8, 9}),
    "prime": frozenset({2, 3, 5, 7}),
    "multiple_of_3": frozenset({0, 3, 6, 9}),
    "closed_loop": frozenset({0, 4, 6, 8, 9}),
    "straight": frozenset({1, 4, 7}),
    "symmetric": frozenset({0, 1, 8}),
    "top_bar": frozenset({5, 7}),
    "round_bottom": frozenset({0, 3, 5, 6, 8, 9}),
}


class DigitsOptions(StrictModel):
    # image: (channels, size, size) images; table: the 64 raw pixels as a (64,) vector, no upsampling
    # (size and channels apply to the image layout only, so a space's image options may stay in place)
    layout: Literal["image", "table"] = "image"
    size: int = Field(default=16, ge=8, le=224)  # upsampled side length
    channels: Literal[1, 3] = 1
    samples: int | None = Field(default=None, ge=10, le=1_000_000_000)  # use a seeded random subset of this many images
    split: SplitConfig = Field(default_factory=lambda: SplitConfig(val=0.15, test=0.25, seed=0))


def check_digits(options: DigitsOptions, tasks: Sequence[TaskConfig]) -> None:
    names = [*DIGIT_ATTRIBUTES, "digit"]
    for i, task in enumerate(tasks):
        if task.name == "digit":
            if task.type != "multiclass" or task.num_classes != 10:
                raise SpecError("'digit' is a multiclass task with num_classes: 10", key=f"tasks[{i}]")
            continue
        if task.name not in DIGIT_ATTRIBUTES:
            raise SpecError(
                f"digits has no attribute {task.name!r}{suggest(task.name, names)}; allowed: {allowed(names)}",
                key=f"tasks[{i}].name",
            )
        if task.type != "binary":
            raise SpecError(f"digits attribute {task.name!r} is binary, not {task.type}", key=f"tasks[{i}].type")
