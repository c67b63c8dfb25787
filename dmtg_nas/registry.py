"""Name -> factory registries with "did you mean" errors, and the ``module:function`` escape hatch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import SpecError, allowed, suggest

T = TypeVar("T")

__all__ = ["Registry", "import_object"]


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
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(f"cannot import module {module_name!r} for {kind} {path!r}: {exc}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise SpecError(f"module {module_name!r} has no attribute {attr!r} ({kind} {path!r})") from None
    return obj
