"""Resolve a validated spec's named components: its data set and its encoder.

The spec layer (:mod:`dmtg_nas.catalog`) checks names, options and files without torch; this layer
adds what needs the libraries themselves (a timm model's existence and stages) and loads the data.
"""

from __future__ import annotations

from typing import Any

from .backbones import build_encoder, check_backbone
from .catalog import check_spec
from .catalog.checks import os_message
from .config import SearchSpec, SplitConfig
from .data import DATASETS, DatasetPlugin, TaskData, UserDataset
from .errors import DataError, SpecError
from .hardware import check_trainer
from .validation import validate_model

__all__ = ["validate_components", "dataset_plugin", "load_data"]

_USER_ENCODER = "user"  # the family encoder_entry gives a ``package.module:factory`` backbone


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


def validate_components(spec: SearchSpec, *, build_user: bool = False) -> None:
    """Check names, options and files of the data set and the encoder: the spec layer's checks
    (:func:`~dmtg_nas.catalog.check_spec`), the encoder's own (a timm model exists, a weights file
    fits it) and the Trainer settings' (:func:`~dmtg_nas.hardware.check_trainer`). With
    ``build_user``, your own encoder (``package.module:factory``) is also built for the data's input
    shape, which loads the data, and its output checked."""
    check_spec(spec)
    check_trainer(spec.strategy.trainer)
    try:
        parsed = check_backbone(spec.backbone)
        if build_user and parsed.family == _USER_ENCODER:
            build_encoder(spec.backbone, load_data(spec).input_shape, maps=any(t.dense for t in spec.tasks))
    except OSError as exc:
        raise SpecError(os_message(exc), key="backbone") from None


def load_data(spec: SearchSpec) -> TaskData:
    """Load (or generate) the spec's data set.

    Raises:
        DataError: the data is missing, unreadable or inconsistent (also for file-system errors).
    """
    plugin, options = dataset_plugin(spec)
    try:
        data = plugin.load(options, spec.tasks)
    except OSError as exc:
        raise DataError(os_message(exc)) from None
    _check_sizes(spec, data, options)
    return data


def _check_sizes(spec: SearchSpec, data: TaskData, options: Any) -> None:
    """Refuse empty splits up front: a run trains on train, selects on val and reports test, and an
    empty one would end in NaN metrics (or a crash) after all the training."""
    sizes = data.sizes()
    empty = next((name for name in ("train", "val", "test") if sizes[name] == 0), None)
    if empty is None:
        return
    counts = ", ".join(f"{name} {n}" for name, n in sizes.items())
    split = getattr(options, "split", None)
    if isinstance(split, SplitConfig) and empty != "train":
        hint = f"dataset.split.{empty} = {getattr(split, empty)} of {sum(sizes.values())} samples rounds to none"
    else:
        hint = f"the data set gives no {empty} samples"
    raise DataError(
        f"dataset {spec.dataset.name!r}: the {empty} split is empty ({counts} samples): {hint}; "
        "a run needs samples in train, val and test"
    )
