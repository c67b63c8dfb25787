"""User data: ``dataset: {name: "package.module:function", ...}``.

The function is imported and called with the data set's other keys as keyword arguments. It
returns the splits and the task definitions, either as a :class:`~dmtg_nas.data.TaskData` (with
``tasks`` set) or as a mapping::

    {"train": Dataset, "val": Dataset, "test": Dataset,     # each yields (x, {task: y})
     "input_shape": (C, H, W) or (D,),
     "tasks": [{"name": "price", "type": "regression"}, ...]}   # optional when the spec lists them

The spec's ``tasks`` may then be left out (they come from the function), or list a subset of the
returned tasks (types must agree). ``examples/user_dataset.py`` is a complete example.

Splits that read files (anything but an in-memory ``TensorTaskDataset``) are wrapped so that an
``OSError`` while reading an item (a missing file, an image PIL cannot decode) becomes a
:class:`~dmtg_nas.errors.DataError` naming the data set, the split and the item index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel
from torch.utils.data import Dataset

from ..catalog.user import UserOptions, call_user_dataset, check_user, forget_user_dataset, user_tasks
from ..errors import DataError, SpecError
from ..schema import TaskConfig
from ..validation import validate_model
from .base import TaskData, TensorTaskDataset

__all__ = ["UserDataset", "UserOptions", "user_tasks"]


class NamedItemErrors(Dataset[Any]):
    """One split of a user data set; an ``OSError`` raised while reading item ``i`` is re-raised as
    a :class:`DataError` that names the data set, the split and ``i`` (with the original message,
    which for file errors holds the path)."""

    def __init__(self, dataset: Dataset[Any], source: str, split: str) -> None:
        self.dataset = dataset
        self.source = source
        self.split = split

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.dataset[index]
        except OSError as exc:
            raise DataError(f"dataset {self.source!r}, {self.split} item {index}: {exc}") from None


def _call(path: str, options: Mapping[str, Any]) -> TaskData:
    return _to_task_data(call_user_dataset(path, options), path)


def _to_task_data(result: Any, path: str) -> TaskData:
    if isinstance(result, TaskData):
        data = result
    elif isinstance(result, Mapping):
        missing = [k for k in ("train", "val", "test", "input_shape") if k not in result]
        if missing:
            raise DataError(f"dataset {path!r} returned a mapping without {', '.join(missing)}")
        shape = result["input_shape"]
        if not isinstance(shape, Sequence) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise DataError(f"dataset {path!r} returned input_shape {shape!r}; expected positive integers")
        data = TaskData(
            result["train"],
            result["val"],
            result["test"],
            tuple(shape),
            tasks=result.get("tasks"),
            info=dict(result.get("info", {})),
        )
    else:
        raise DataError(f"dataset {path!r} must return a TaskData or a mapping, got {type(result).__name__}")
    if data.tasks is not None:
        data.tasks = [
            t if isinstance(t, TaskConfig) else validate_model(TaskConfig, t, f"dataset {path!r} tasks[{i}]")
            for i, t in enumerate(data.tasks)
        ]
    return data


class UserDataset:
    """A data set given as ``package.module:function`` (see the module docstring)."""

    Options: ClassVar[type[BaseModel]] = UserOptions

    def __init__(self, path: str) -> None:
        self.path = path

    def check(self, options: UserOptions, tasks: Sequence[TaskConfig]) -> None:
        check_user(self.path)

    def load(self, options: UserOptions, tasks: Sequence[TaskConfig]) -> TaskData:
        data = _call(self.path, dict(options.model_extra or {}))
        if data.tasks is not None:
            defined = {t.name: t for t in data.tasks}
            for i, task in enumerate(tasks):
                if task.name not in defined:
                    raise SpecError(
                        f"dataset {self.path!r} defines no task {task.name!r}; it defines {', '.join(defined)}",
                        key=f"tasks[{i}].name",
                    )
                if defined[task.name].type != task.type:
                    raise SpecError(
                        f"dataset {self.path!r} defines {task.name!r} as {defined[task.name].type}, not {task.type}",
                        key=f"tasks[{i}].type",
                    )
        for split in ("train", "val", "test"):
            part = getattr(data, split)
            if not isinstance(part, (TensorTaskDataset, NamedItemErrors)):
                setattr(data, split, NamedItemErrors(part, self.path, split))
        if len(data.train) == 0:  # type: ignore[arg-type]
            raise DataError(f"dataset {self.path!r} returned an empty training split")
        _, targets = data.train[0]
        absent = [t.name for t in tasks if t.name not in targets]
        if absent:
            raise DataError(f"dataset {self.path!r}: samples carry no target for {', '.join(absent)}")
        data.tasks = list(tasks)
        forget_user_dataset()  # the search holds the data from here on
        return data
