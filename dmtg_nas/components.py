"""Resolve a validated spec's named components: its data set and its encoder.

The spec layer (:mod:`dmtg_nas.catalog`) checks names, options and files without torch; this layer
adds what needs the libraries themselves (a timm model's existence and stages) and loads the data.
"""

from __future__ import annotations

from typing import Any

from .backbones import check_backbone
from .catalog import check_spec
from .catalog.checks import os_message
from .config import SearchSpec
from .data import DATASETS, DatasetPlugin, TaskData, UserDataset
from .errors import DataError, SpecError
from .validation import validate_model

__all__ = ["validate_components", "dataset_plugin", "load_data"]


def dataset_plugin(spec: SearchSpec) -> tuple[DatasetPlugin, Any]:
    """The registered data set named by the spec (or user data, ``package.module:function``) and
    its validated options."""
    name = spec.dataset.name
    if ":" in name and name not in DATASETS:
        user = UserDataset(name)
        return user, validate_model(user.Options, dict(spec.dataset.model_extra or {}), "dataset")
    try:
        plugin = DATASETS.lookup(name)
    except SpecError as exc:
        raise SpecError(exc.message, key="dataset.name") from None
    options = validate_model(plugin.Options, dict(spec.dataset.model_extra or {}), "dataset")
    return plugin, options


def validate_components(spec: SearchSpec) -> None:
    """Check names, options and files of the data set and the encoder (no heavy loading): the spec
    layer's checks (:func:`~dmtg_nas.catalog.check_spec`) and the encoder's own (timm models)."""
    check_spec(spec)
    try:
        check_backbone(spec.backbone)
    except OSError as exc:
        raise SpecError(os_message(exc), key="backbone") from None


def load_data(spec: SearchSpec) -> TaskData:
    """Load (or generate) the spec's data set.

    Raises:
        DataError: the data is missing, unreadable or inconsistent (also for file-system errors).
    """
    plugin, options = dataset_plugin(spec)
    try:
        return plugin.load(options, spec.tasks)
    except OSError as exc:
        raise DataError(os_message(exc)) from None
