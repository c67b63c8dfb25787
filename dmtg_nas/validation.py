"""Validation of spec documents against their pydantic models, with errors a user can act on.

:func:`validate_model` checks keys first (unknown keys are named with a "did you mean" and the
allowed ones, section by section), then the values; the first problem becomes one
:class:`~dmtg_nas.errors.SpecError` that names the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic
from pydantic import BaseModel

from .errors import SpecError, suggest

__all__ = ["validate_model", "join_key", "show_value"]

M = typing.TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate ``data`` against ``model``; raise one :class:`SpecError` for the first problem."""
    if isinstance(data, Mapping):
        _check_keys(model, data, prefix)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _to_spec_error(exc, prefix) from None


def join_key(prefix: str, loc: Sequence[Any]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model class, is_list) when ``annotation`` is a model or a list/optional of one."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin in (list, Sequence):
        inner, _ = _submodel(typing.get_args(annotation)[0])
        return inner, True
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner, is_list = _submodel(arg)
            if inner is not None:
                return inner, is_list
    return None, False


def _check_keys(model: type[BaseModel], data: Mapping[str, Any], prefix: str) -> None:
    """Reject unknown keys with the allowed ones and a "did you mean"; recurse into sections."""
    fields = model.model_fields
    if model.model_config.get("extra") == "forbid":
        for key in data:
            if key not in fields:
                names = list(fields)
                raise SpecError(
                    f"unknown key {key!r}{suggest(str(key), names)}; allowed: {', '.join(names)}",
                    key=join_key(prefix, [key]),
                )
    for name, field in fields.items():
        if name not in data:
            continue
        sub, is_list = _submodel(field.annotation)
        if sub is None:
            continue
        value = data[name]
        if is_list:  # a mapping where a list belongs is a type error, reported by pydantic
            for i, item in enumerate(value if isinstance(value, list) else []):
                if isinstance(item, Mapping):
                    _check_keys(sub, item, join_key(prefix, [name, i]))
        elif isinstance(value, Mapping):
            _check_keys(sub, value, join_key(prefix, [name]))


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _error_location(err: Any) -> list[Any]:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-")))]
    # drop pydantic's union branch names such as 'int' / 'float' / 'list[...]'
    return [
        p
        for p in loc
        if not (
            isinstance(p, str)
            and ("[" in p or p in {"int", "float", "str", "none", "constrained-int", "constrained-float"})
        )
    ]


def _to_spec_error(exc: pydantic.ValidationError, prefix: str) -> SpecError:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = _error_location(err)
    key = join_key(prefix, loc) or None
    etype = err["type"]
    value = err.get("input")
    shown = show_value(value)
    if etype == "missing":
        message = "missing required key"
    elif etype == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
        message = f"bad value {shown}{suggest(str(value), choices)}; allowed: {expected}"
    elif etype in _TYPE_NAMES:
        # a union with named values (``int | Literal["auto"]``): each branch reports its own error
        named = [
            e["ctx"]["expected"]
            for e in errors[1:]
            if e["type"] == "literal_error" and "expected" in e.get("ctx", {}) and _error_location(e) == loc
        ]
        expected = " or ".join([_TYPE_NAMES[etype], *named])
        message = f"expected {expected}, got {shown} ({type(value).__name__})"
    elif etype == "value_error":
        message = str(err["msg"]).removeprefix("Value error, ")
    else:
        message = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {shown}"
    return SpecError(message, key=key)


def show_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
