"""What a spec may name, as the spec layer sees it: an options model and a cheap check, no objects.

A :class:`DatasetEntry` is a data set's options and its check of files and task names; a
:class:`EncoderEntry` is an encoder's options, the inputs it takes, how many stages it has and how
its widths scale. Loading the data and building the encoder are the layer above
(:mod:`dmtg_nas.data`, :mod:`dmtg_nas.backbones`), which keeps the same names. Nothing here imports
torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from ..schema import TaskConfig

__all__ = ["DatasetEntry", "EncoderEntry"]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set: ``Options`` validates its keys in the spec's ``dataset`` section,
    ``check(options, tasks)`` raises :class:`~dmtg_nas.errors.SpecError` for files that are missing
    and task names the data set does not have (without loading the data)."""

    Options: type[BaseModel]
    check: Callable[[Any, Sequence[TaskConfig]], None]
    description: str = ""


@dataclass(frozen=True)
class EncoderEntry:
    """A registered encoder family.

    Attributes:
        Options: its keys in the spec's ``backbone`` section.
        inputs: ``vector`` (any shape, flattened), ``image`` ((C, H, W) inputs) or ``any`` (user
            encoders: what they take is theirs to check).
        stages: how many stages ``shared_stem`` can count, from the options; None when only the
            built model knows (timm: resolved by :func:`dmtg_nas.backbones.check_backbone`).
        scale: the options with every layer's width multiplied by a factor (None: no widths to scale).
        model_name: the family takes a model name after a colon (``timm:<model>``).
    """

    Options: type[BaseModel]
    inputs: Literal["vector", "image", "any"]
    stages: Callable[[Any], int] | None
    scale: Callable[[Any, float], dict[str, Any]] | None = None
    description: str = ""
    model_name: bool = False
