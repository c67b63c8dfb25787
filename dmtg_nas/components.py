"""Resolve a validated spec's named components: its data set and its encoder."""

from __future__ import annotations

from typing import Any

from .backbones import check_backbone
from .config import SearchSpec, validate_model
from .data import DATASETS, DatasetPlugin, TaskData, UserDataset
from .errors import DataError, SpecError

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
    """Check names, options and files of the data set and the encoder (no heavy loading)."""
    plugin, options = dataset_plugin(spec)
    try:
        plugin.check(options, spec.tasks)
    except OSError as exc:  # a path the file system refuses (too long, not a folder, no permission)
        raise SpecError(_os_message(exc), key="dataset") from None
    try:
        check_backbone(spec.backbone)
    except OSError as exc:
        raise SpecError(_os_message(exc), key="backbone") from None
    if spec.reference is not None:
        from .metrics import load_reference

        try:
            load_reference([spec.reference] if isinstance(spec.reference, str) else spec.reference)
        except DataError as exc:
            raise SpecError(str(exc), key="reference") from None
    if any(t.dense for t in spec.tasks) and spec.backbone.name == "mlp":
        raise SpecError(
            "dense tasks need feature maps; 'mlp' gives vectors: use an image encoder such as 'convnet' or "
            "'timm:<model>'",
            key="backbone.name",
        )


def load_data(spec: SearchSpec) -> TaskData:
    """Load (or generate) the spec's data set.

    Raises:
        DataError: the data is missing, unreadable or inconsistent (also for file-system errors).
    """
    plugin, options = dataset_plugin(spec)
    try:
        return plugin.load(options, spec.tasks)
    except OSError as exc:
        raise DataError(_os_message(exc)) from None


def _os_message(exc: OSError) -> str:
    name = exc.filename if isinstance(exc.filename, str) else None
    shown = name if name is None or len(name) <= 80 else name[:77] + "..."
    return f"{shown}: {exc.strerror or exc}" if shown else str(exc.strerror or exc)
