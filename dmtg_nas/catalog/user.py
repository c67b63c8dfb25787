"""User data (``dataset: {name: "package.module:function", ...}``) as the spec layer sees it.

The function is imported and called here when a spec lists no tasks (its task definitions fill
them in); the result is kept so that loading the data (:mod:`dmtg_nas.data.user`) does not call the
function a second time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import DataError, SpecError
from ..registry import import_object
from ..schema import TaskConfig
from ..validation import validate_model

__all__ = ["UserOptions", "call_user_dataset", "check_user", "forget_user_dataset", "user_tasks"]

_LAST: dict[str, Any] = {}  # the last call's result, so a spec without tasks loads once


class UserOptions(BaseModel):
    """Any keys: passed to the function as keyword arguments."""

    model_config = ConfigDict(extra="allow")


def call_user_dataset(path: str, options: Mapping[str, Any]) -> Any:
    """What the function ``path`` returns for ``options`` (the last call's result is reused)."""
    key = f"{path}|{json.dumps(dict(options), sort_keys=True, default=str)}"
    if key in _LAST:
        return _LAST[key]
    fn = import_object(path, "dataset")
    if not callable(fn):
        raise SpecError(f"dataset {path!r} is not callable", key="dataset.name")
    try:
        result = fn(**options)
    except TypeError as exc:
        raise SpecError(f"dataset {path!r} does not accept these options: {exc}", key="dataset") from None
    except OSError as exc:
        raise DataError(f"dataset {path!r} cannot read its data: {exc}") from None
    _LAST.clear()
    _LAST[key] = result
    return result


def forget_user_dataset() -> None:
    """Drop the kept result (the search holds the data from here on)."""
    _LAST.clear()


def user_tasks(path: str, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The task definitions a user data set returns (for a spec that lists none)."""
    result = call_user_dataset(path, options)
    if isinstance(result, Mapping):
        missing = [k for k in ("train", "val", "test", "input_shape") if k not in result]
        if missing:
            raise DataError(f"dataset {path!r} returned a mapping without {', '.join(missing)}")
    elif not all(hasattr(result, k) for k in ("train", "val", "test", "input_shape", "tasks")):
        raise DataError(f"dataset {path!r} must return a TaskData or a mapping, got {type(result).__name__}")
    raw = result.get("tasks") if isinstance(result, Mapping) else getattr(result, "tasks", None)
    if not raw:
        raise SpecError(f"the spec lists no tasks and dataset {path!r} returns none", key="tasks")
    where = f"dataset {path!r} tasks"
    tasks = [
        t if isinstance(t, TaskConfig) else validate_model(TaskConfig, t, f"{where}[{i}]") for i, t in enumerate(raw)
    ]
    return [t.model_dump(mode="json", exclude_defaults=True) | {"type": t.type} for t in tasks]


def check_user(path: str) -> None:
    """The function can be imported and called."""
    fn = import_object(path, "dataset")
    if not callable(fn):
        raise SpecError(f"dataset {path!r} is not callable", key="dataset.name")
