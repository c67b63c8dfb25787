"""Resolve a validated spec's named components: its data set and its encoder."""

from __future__ import annotations

from typing import Any

from .backbones import check_backbone
from .config import SearchSpec, validate_model
from .data import DATASETS, DatasetPlugin, TaskData
from .errors import SpecError

__all__ = ["validate_components", "dataset_plugin", "load_data"]


def dataset_plugin(spec: SearchSpec) -> tuple[DatasetPlugin, Any]:
    """The registered data set named by the spec and its validated options."""
    try:
        plugin = DATASETS.lookup(spec.dataset.name)
    except SpecError as exc:
        raise SpecError(exc.message, key="dataset.name") from None
    options = validate_model(plugin.Options, dict(spec.dataset.model_extra or {}), "dataset")
    return plugin, options


def validate_components(spec: SearchSpec) -> None:
    """Check names, options and files of the data set and the encoder (no heavy loading)."""
    plugin, options = dataset_plugin(spec)
    plugin.check(options, spec.tasks)
    check_backbone(spec.backbone)


def load_data(spec: SearchSpec) -> TaskData:
    """Load (or generate) the spec's data set."""
    plugin, options = dataset_plugin(spec)
    return plugin.load(options, spec.tasks)
