"""Looking up a spec's data set and encoder in the catalog, and checking them before anything loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import DataError, SpecError, allowed, file_problem, suggest
from ..metrics import load_reference
from ..schema import BackboneConfig, SearchSpec
from ..validation import validate_model
from .base import DatasetEntry, EncoderEntry
from .encoders import USER, TimmOptions
from .registries import DATASETS, ENCODERS
from .user import UserOptions, check_user

__all__ = ["ParsedEncoder", "check_spec", "dataset_entry", "encoder_entry", "os_message"]


def dataset_entry(spec: SearchSpec) -> tuple[DatasetEntry, Any]:
    """The spec's data set (a registered one, or user data ``package.module:function``) and its
    validated options."""
    name = spec.dataset.name
    extras = dict(spec.dataset.model_extra or {})
    if ":" in name and name not in DATASETS:
        entry = DatasetEntry(UserOptions, lambda options, tasks: check_user(name), "user data")
        return entry, validate_model(UserOptions, extras, "dataset")
    try:
        entry = DATASETS.lookup(name)
    except SpecError as exc:
        raise SpecError(exc.message, key="dataset.name") from None
    return entry, validate_model(entry.Options, extras, "dataset")


@dataclass(frozen=True)
class ParsedEncoder:
    """A spec's ``backbone`` section resolved against the catalog: the family's name (``timm`` for
    ``timm:<model>``), its entry, its validated options and the model name (None for families
    without one)."""

    family: str
    entry: EncoderEntry
    options: Any
    model: str | None = None


def encoder_entry(config: BackboneConfig) -> ParsedEncoder:
    """Look up ``backbone.name`` and validate its options and ``shared_stem`` depth (where the
    options tell the stages). The one place that reads the ``family:model`` form of a name; a
    ``package.module:factory`` whose package is no registered family is a user encoder (family
    ``user``, the path as its model; :func:`dmtg_nas.backbones.build_encoder` imports it)."""
    family, colon, model = config.name.partition(":")
    if colon and family not in ENCODERS:
        if not family or not model:
            raise SpecError(f"backbone {config.name!r} must look like 'package.module:factory'", key="backbone.name")
        user = validate_model(USER.Options, dict(config.model_extra or {}), "backbone")
        _check_weights(user.pretrained)  # type: ignore[attr-defined]
        if config.shared_stem:
            raise SpecError(
                f"your own encoder {config.name!r} is one unit: shared_stem must be 0", key="backbone.shared_stem"
            )
        return ParsedEncoder("user", USER, user, config.name)
    plain = [n for n in ENCODERS.names() if not ENCODERS.lookup(n).model_name]
    named = [n for n in ENCODERS.names() if ENCODERS.lookup(n).model_name]
    entry = ENCODERS.lookup(family) if family in ENCODERS else None
    if entry is None or entry.model_name != bool(colon) or (colon and not model):
        names = [*plain, *(f"{n}:" for n in named)]
        forms = " or ".join(f"'{n}:<model name>'" for n in named)
        raise SpecError(
            f"unknown backbone {config.name!r}{suggest(config.name, names)}; allowed: {allowed(plain)} or {forms}",
            key="backbone.name",
        )
    options: BaseModel = validate_model(entry.Options, dict(config.model_extra or {}), "backbone")
    _check_weights(options.pretrained if isinstance(options, TimmOptions) else None)
    if config.shared_stem and entry.stages is not None:
        check_shared_stem(config, entry.stages(options))
    return ParsedEncoder(family, entry, options, model or None)


def _check_weights(pretrained: bool | str | None) -> None:
    """``pretrained`` names a local file; ``true`` (which would mean a download) is refused."""
    if pretrained is True:
        raise SpecError(
            "true would download weights, which is never done: give a local weights file instead, "
            "pretrained: path/to/weights.pth (a state_dict of this architecture, .pth or .safetensors)",
            key="backbone.pretrained",
        )
    if isinstance(pretrained, str) and (what := file_problem(Path(pretrained))) is not None:
        raise SpecError(f"weights {what}: {pretrained}", key="backbone.pretrained")


def check_shared_stem(config: BackboneConfig, stages: int) -> None:
    """``shared_stem`` must leave at least one stage to branch."""
    if config.shared_stem >= stages:
        raise SpecError(
            f"shared_stem {config.shared_stem} leaves no stage to branch: {config.name} has {stages} stages "
            f"(allowed: 0 to {stages - 1})",
            key="backbone.shared_stem",
        )


def check_spec(spec: SearchSpec) -> None:
    """Check the names, options and files of the spec's data set, encoder and reference results
    (no loading, no torch). What only a built encoder can tell (a timm model's existence and stages)
    is checked by :func:`dmtg_nas.components.validate_components`."""
    entry, options = dataset_entry(spec)
    try:
        entry.check(options, spec.tasks)
    except OSError as exc:  # a path the file system refuses (too long, not a folder, no permission)
        raise SpecError(os_message(exc), key="dataset") from None
    try:
        encoder = encoder_entry(spec.backbone)
    except OSError as exc:
        raise SpecError(os_message(exc), key="backbone") from None
    if spec.reference is not None:
        try:
            load_reference([spec.reference] if isinstance(spec.reference, str) else spec.reference)
        except DataError as exc:
            raise SpecError(str(exc), key="reference") from None
    if any(t.dense for t in spec.tasks) and encoder.entry.inputs == "vector":
        raise SpecError(
            f"dense tasks need feature maps; {spec.backbone.name!r} gives vectors: use an image encoder such as "
            "'convnet' or 'timm:<model>'",
            key="backbone.name",
        )


def os_message(exc: OSError) -> str:
    """An ``OSError`` in one line, naming the file (shortened)."""
    name = exc.filename if isinstance(exc.filename, str) else None
    shown = name if name is None or len(name) <= 80 else name[:77] + "..."
    return f"{shown}: {exc.strerror or exc}" if shown else str(exc.strerror or exc)
