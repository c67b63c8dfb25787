"""Locate the shipped YAML presets: ``search_spaces/*.yaml`` and ``strategies/*.yaml``.

In a source checkout they are the top-level folders of the repository; in an installed wheel they
are the package-data folders ``dmtg_nas/search_spaces`` and ``dmtg_nas/strategies`` (mapped there by
``pyproject.toml``). Either way a preset is found by its bare name (``planted``, ``dmtg``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["PresetKind", "preset_dir", "list_presets", "find_preset"]

PresetKind = Literal["search_spaces", "strategies"]


def preset_dir(kind: PresetKind) -> Path | None:
    """The folder holding the shipped presets of ``kind``, or None when none is installed."""
    here = Path(__file__).resolve().parent
    for folder in (here / kind, here.parent / kind):  # installed wheel, source checkout
        if folder.is_dir():
            return folder
    return None


def list_presets(kind: PresetKind) -> list[str]:
    """Names (file stems) of the shipped presets of ``kind``, sorted."""
    folder = preset_dir(kind)
    if folder is None:
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def find_preset(kind: PresetKind, name: str) -> Path | None:
    """The file of the shipped preset ``name``, or None."""
    folder = preset_dir(kind)
    if folder is None:
        return None
    if name not in list_presets(kind):  # only bare names of shipped files, never a path
        return None
    return folder / f"{name}.yaml"
