"""Name -> factory registries with "did you mean" errors, and the ``module:function`` escape hatch.

A ``module:function`` path names user code that usually sits next to the spec (``examples/``), so
a module that is not importable from ``sys.path`` is looked for in the folders of the spec files
loaded so far and in the current folder, as ``cd examples && dmtg search user_encoder.yaml`` or
``dmtg search examples/user_encoder.yaml`` expect without ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Generic, TypeVar

from .errors import SpecError, allowed, suggest

T = TypeVar("T")

__all__ = ["Registry", "add_user_folder", "import_object", "user_folders"]

_FOLDERS: list[Path] = []  # folders of the spec files loaded in this process, latest first


class Registry(Generic[T]):
    """A named collection of factories (datasets, backbones, schedules, ...).

    ``lookup`` accepts a registered name or, when ``allow_import`` is set, ``"package.module:attr"``
    naming user code.
    """

    def __init__(self, kind: str, *, allow_import: bool = False) -> None:
        self.kind = kind
        self.allow_import = allow_import
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def lookup(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if self.allow_import and ":" in name:
            return import_object(name, self.kind)  # type: ignore[return-value]
        hint = " or 'package.module:function'" if self.allow_import else ""
        raise SpecError(
            f"unknown {self.kind} {name!r}{suggest(name, self._items)}; allowed: {allowed(self.names())}{hint}"
        )


def import_object(path: str, kind: str = "object") -> object:
    """Import ``"package.module:attr"``; errors name the path."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise SpecError(f"{kind} {path!r} must look like 'package.module:function'")
    try:
        module = _import_user_module(module_name)
    except ImportError as exc:
        raise SpecError(f"cannot import module {module_name!r} for {kind} {path!r}: {exc}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise SpecError(f"module {module_name!r} has no attribute {attr!r} ({kind} {path!r})") from None
    return obj


def add_user_folder(folder: str | Path) -> None:
    """Look for user modules in ``folder`` too (a spec file's folder; :func:`dmtg_nas.load_spec`)."""
    path = Path(folder).resolve()
    if path in _FOLDERS:
        _FOLDERS.remove(path)
    _FOLDERS.insert(0, path)


def user_folders() -> list[Path]:
    """Where user modules are looked for besides ``sys.path``: the spec files' folders, then the
    current folder."""
    cwd = Path.cwd().resolve()
    return [*(f for f in _FOLDERS if f != cwd), cwd]


def _import_user_module(name: str) -> ModuleType:
    """``importlib.import_module(name)``; when ``name`` itself is missing (not a module it
    imports), again with :func:`user_folders` in front of ``sys.path`` for this import only."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise
    saved = list(sys.path)
    sys.path[:0] = [str(f) for f in user_folders()]
    importlib.invalidate_caches()  # a folder's listing may be cached from before the module was written
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved
