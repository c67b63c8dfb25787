"""Declarative search spaces and strategies: YAML loading, ``_base_`` inheritance, ``--set``
overrides and validation.

A *search-space spec* names the tasks, the data, the branch encoder, the heads, the number of
branches K and the strategy. The strategy is a shipped preset name (``strategies/*.yaml``), a path,
or an inline mapping (which may itself start from a preset with ``_base_``). Every document is
validated before anything runs: unknown keys, wrong types and out-of-range values raise
:class:`~dmtg_nas.errors.SpecError` naming the file, the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .catalog import check_spec
from .catalog.user import user_tasks
from .errors import DmtgError, SpecError, allowed, file_problem, suggest
from .presets import PresetKind, find_preset, list_presets
from .registry import add_user_folder
from .schema import (
    DENSE_TYPES,
    MAX_BATCH,
    MAX_COUNT,
    MAX_DOCUMENT_DEPTH,
    MAX_DOCUMENT_NODES,
    MAX_EPOCHS,
    MAX_SEED,
    MAX_WIDTH,
    TASK_LOSSES,
    BackboneConfig,
    DatasetConfig,
    Epochs,
    FinetuneConfig,
    HeadsConfig,
    InitConfig,
    LocalSearchConfig,
    LRScheduleConfig,
    OptimizerConfig,
    Schedule,
    SearchSpec,
    Seed,
    SplitConfig,
    StrategyConfig,
    StrictModel,
    TaskConfig,
    TaskType,
    TemperatureConfig,
    TrainerConfig,
    TuningConfig,
    WarmupConfig,
    Width,
    renamed_key,
)
from .validation import join_key, show_value, validate_model

# the spec's models are defined in dmtg_nas.schema and re-exported here (the names users import)
__all__ = [
    "DENSE_TYPES",
    "MAX_BATCH",
    "MAX_COUNT",
    "MAX_DOCUMENT_DEPTH",
    "MAX_DOCUMENT_NODES",
    "MAX_EPOCHS",
    "MAX_SEED",
    "MAX_WIDTH",
    "TASK_LOSSES",
    "Epochs",
    "Schedule",
    "Seed",
    "TaskType",
    "Width",
    "StrictModel",
    "TaskConfig",
    "SplitConfig",
    "DatasetConfig",
    "BackboneConfig",
    "HeadsConfig",
    "TemperatureConfig",
    "OptimizerConfig",
    "LRScheduleConfig",
    "FinetuneConfig",
    "LocalSearchConfig",
    "InitConfig",
    "WarmupConfig",
    "TrainerConfig",
    "StrategyConfig",
    "SearchSpec",
    "TuningConfig",
    "SpecDumper",
    "SpecLoader",
    "dump_yaml",
    "check_document",
    "load_spec",
    "load_yaml",
    "load_strategy",
    "resolve_document",
    "parse_override",
    "validate_model",
]

# ----------------------------------------------------------------------------------------------
# Loading documents
# ----------------------------------------------------------------------------------------------


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice (``key``; ``first``: where it came first)."""

    def __init__(self, key: Any, first: yaml.Mark, mark: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r} (first at line {first.line + 1})", mark)
        self.key = key


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only: Python tags are refused) with two changes for specs:

    - a key given twice in one mapping is an error (:class:`DuplicateKeyError`): YAML requires
      unique keys, and PyYAML would silently keep the last value;
    - ``1e-3`` and ``1.5e3`` are numbers, as in YAML 1.2 (YAML 1.1 reads them as strings, so
      ``lr: 1e-3`` would be refused as "expected a number").
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with '<<' may be overridden; complex keys stay PyYAML's
            key = self.construct_object(key_node)
            if key in seen:
                raise DuplicateKeyError(key, seen[key], key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


class SpecDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes what :class:`SpecLoader` would read back as another type
    (a string ``"1e3"``), so a written spec (a run's ``config.yaml``) reads back the same."""


for _cls in (SpecLoader, SpecDumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def load_yaml(text: str) -> Any:
    """Parse one YAML document with :class:`SpecLoader` (what ``yaml.load`` does with a loader class)."""
    loader = SpecLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def dump_yaml(data: Any) -> str:
    """``data`` as YAML that :func:`load_yaml` reads back unchanged (keys in their order)."""
    return yaml.dump(data, Dumper=SpecDumper, sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read file: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"not a UTF-8 text file (byte {exc.start})", source=str(path)) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"invalid YAML{where}: {problem}", source=str(path)) from None
    except RecursionError:
        raise SpecError(f"the document nests deeper than {MAX_DOCUMENT_DEPTH} levels", source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"the document must be a mapping, got {type(data).__name__}", source=str(path))
    try:
        check_document(data)
    except SpecError as exc:
        raise exc.located(str(path)) from None
    return data


def check_document(doc: Any) -> None:
    """Reject documents no spec can be: more than :data:`MAX_DOCUMENT_NODES` values once YAML
    aliases are expanded (an "alias bomb"), deeper than :data:`MAX_DOCUMENT_DEPTH` levels, or
    holding NUL characters (which no file name or option can contain).

    Stops at the first problem, so its cost is bounded by the limits, not by the document.
    """
    count = 0
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        node, key, depth = stack.pop()
        count += 1
        if count > MAX_DOCUMENT_NODES:
            raise SpecError(f"the document expands to more than {MAX_DOCUMENT_NODES} values (YAML aliases?)")
        if depth > MAX_DOCUMENT_DEPTH:
            raise SpecError(f"nested deeper than {MAX_DOCUMENT_DEPTH} levels", key=key or None)
        if isinstance(node, str) and "\x00" in node:
            raise SpecError("contains a NUL character", key=key or None)
        if isinstance(node, Mapping):
            for k, v in node.items():
                if isinstance(k, str) and "\x00" in k:
                    raise SpecError("a key contains a NUL character", key=key or None)
                stack.append((v, join_key(key, [str(k)]), depth + 1))
        elif isinstance(node, list):
            stack.extend((v, join_key(key, [i]), depth + 1) for i, v in enumerate(node))


def _locate(ref: str, kind: PresetKind, relative_to: Path | None) -> Path:
    """Resolve a preset name or a path (absolute, relative to ``relative_to``, or to the CWD)."""
    candidates = []
    as_path = _expand_user(ref)
    if as_path.is_absolute():
        candidates.append(as_path)
    else:
        if relative_to is not None:
            candidates.append(relative_to / as_path)
        candidates.append(Path.cwd() / as_path)
    for cand in candidates:
        try:
            if cand.is_file():
                return cand.resolve()
            what = file_problem(cand)
        except (OSError, ValueError) as exc:  # a name the file system refuses (too long, NUL)
            reason = getattr(exc, "strerror", None) or exc
            raise SpecError(f"cannot use {show_value(ref)} as a file name: {reason}") from None
        if what is not None and what.startswith("not a regular file"):  # /dev/zero, a FIFO: read forever
            raise SpecError(f"{cand}: {what}; give a YAML file")
    preset = find_preset(kind, ref)
    if preset is not None:
        return preset
    names = list_presets(kind)
    label = "search space" if kind == "search_spaces" else "strategy preset"
    folder = next((c for c in candidates if c.is_dir()), None)
    what = (
        f"{folder} is a folder, not a YAML file, and there is no shipped {label} of that name"
        if folder
        else (f"no file or shipped {label} named {show_value(ref)}{suggest(ref, names)}")
    )
    raise SpecError(f"{what}; shipped: {allowed(names)}")


def _deep_merge(base: dict[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_document(
    ref: str | Path, kind: PresetKind, *, relative_to: Path | None = None, _chain: tuple[Path, ...] = ()
) -> tuple[dict[str, Any], Path]:
    """Load a YAML document by preset name or path and apply its ``_base_`` chain.

    ``_base_`` is a name/path or a list of them, merged left to right, then the document on top.
    Relative ``_base_`` paths are resolved against the document's folder.
    """
    path = _locate(str(ref), kind, relative_to)
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise SpecError(f"_base_ inheritance cycle: {cycle}", source=str(path))
    doc = _read_yaml(path)
    return _apply_base(doc, kind, path.parent, (*_chain, path), source=str(path)), path


def _apply_base(
    doc: dict[str, Any], kind: PresetKind, folder: Path | None, chain: tuple[Path, ...], source: str
) -> dict[str, Any]:
    if kind == "search_spaces":
        _old_names(doc, source)
    bases = doc.pop("_base_", None)
    if bases is None:
        return doc
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise SpecError("must be a file name or a list of file names", source=source, key="_base_")
    merged: dict[str, Any] = {}
    for base in bases:
        try:
            base_doc, _ = resolve_document(base, kind, relative_to=folder, _chain=chain)
        except SpecError as exc:
            raise exc.located(source, "_base_") from None
        merged = _deep_merge(merged, base_doc)
    return _deep_merge(merged, doc)


def _old_names(doc: dict[str, Any], source: str) -> None:
    """Read K's old name ``groups`` (top level and in ``tuning``) as ``branches``, in each document
    before it is merged, so a base's old name and a child's new one do not collide."""
    try:
        renamed_key(doc, "groups", "branches")
        if isinstance(doc.get("tuning"), dict):
            renamed_key(doc["tuning"], "groups", "branches", "tuning.")
    except ValueError as exc:
        raise SpecError(str(exc), source=source) from None


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``"a.b=value"``; the value is parsed as YAML (``4`` -> int, ``1e-3`` -> float, ``[a, b]`` ->
    list, with :class:`SpecLoader`); what is not valid YAML stays the string as typed."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"override {item!r} must look like 'dotted.key=value'", source="--set")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except DuplicateKeyError as exc:
        raise SpecError(f"duplicate key {exc.key!r} in the value", source="--set", key=key) from None
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key, value


def _set_dotted(doc: dict[str, Any], key: str, value: Any) -> None:
    node: Any = doc
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: i + 1]))
            continue
        if not isinstance(node, dict):
            raise SpecError(f"cannot set {key!r}: {'.'.join(parts[:i])!r} is not a mapping", source="--set")
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        index = int(last) if last.isdigit() else -1
        if not 0 <= index < len(node):
            raise SpecError(f"cannot set {key!r}: no list item {last!r}", source="--set")
        node[index] = value
    else:
        node[last] = value


def _list_item(node: list[Any], part: str, path: str) -> Any:
    if not part.isdigit() or int(part) >= len(node):
        raise SpecError(f"{path!r}: no list item {part!r} (the list has {len(node)} items)", source="--set")
    return node[int(part)]


def _expand_strategy(doc: dict[str, Any], folder: Path | None, source: str) -> None:
    """Replace a strategy name/path by its document; apply ``_base_`` of an inline mapping."""
    strat = doc.get("strategy", "dmtg")
    if isinstance(strat, str):
        try:
            loaded, path = resolve_document(strat, "strategies", relative_to=folder)
        except SpecError as exc:
            raise SpecError(exc.message, source=exc.source or source, key="strategy") from None
        loaded.setdefault("name", path.stem)
        doc["strategy"] = loaded
    elif isinstance(strat, dict) and "_base_" in strat:
        doc["strategy"] = _apply_base(strat, "strategies", folder, (), source)


_PATH_KEYS = ("path", "root", "cache")


def _expand_user(value: str) -> Path:
    """``~`` and ``~user`` expanded; left as is when that user has no home folder."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        return Path(value)


def _absolute(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and value and not _expand_user(value).is_absolute():
        return str((folder / value).resolve())
    if isinstance(value, str) and value:
        return str(_expand_user(value))
    return value


def _resolve_paths(doc: dict[str, Any], folder: Path) -> None:
    """Make relative file names absolute against the spec's folder: the data set's
    ``path``/``root``/``cache``, the backbone's ``pretrained`` weights and ``reference`` files."""
    dataset = doc.get("dataset")
    if isinstance(dataset, dict):
        for key in _PATH_KEYS:
            if key in dataset:
                dataset[key] = _absolute(dataset[key], folder)
    backbone = doc.get("backbone")
    if isinstance(backbone, dict) and isinstance(backbone.get("pretrained"), str):
        backbone["pretrained"] = _absolute(backbone["pretrained"], folder)
    ref = doc.get("reference")
    if isinstance(ref, str):
        doc["reference"] = _absolute(ref, folder)
    elif isinstance(ref, list):
        doc["reference"] = [_absolute(r, folder) for r in ref]


def code_paths(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The import paths a (merged) spec document names, as ``(key, "package.module:function")``:
    code that validating or running the spec imports and calls (a user data set)."""
    dataset = doc.get("dataset")
    name = dataset.get("name") if isinstance(dataset, Mapping) else None
    return [("dataset.name", name)] if isinstance(name, str) and ":" in name else []


def load_spec(
    spec: str | Path | Mapping[str, Any], overrides: Iterable[str] = (), *, trust_code: bool = True
) -> SearchSpec:
    """Load and validate a search-space spec.

    Args:
        spec: a shipped search-space name (``"planted"``), a YAML path, or a mapping.
        overrides: ``"dotted.key=value"`` strings applied to the merged document.
        trust_code: False for a file the user did not name (a run folder's ``config.yaml``): a
            spec naming code to import (:func:`code_paths`) is then refused before anything is
            imported, with a hint to pass ``--trust-code``.

    Raises:
        SpecError: the spec, a file it names or an override is invalid (or names code, untrusted).
    """
    if isinstance(spec, Mapping):
        try:
            check_document(spec)
        except SpecError as exc:
            raise exc.located("<spec>") from None
        doc = copy.deepcopy(dict(spec))
        folder: Path | None = None
        source = "<spec>"
        doc = _apply_base(doc, "search_spaces", None, (), source)
    else:
        doc, path = resolve_document(spec, "search_spaces")
        folder = path.parent
        add_user_folder(folder)  # its module:function paths may name modules next to it
        source = str(path)
        _resolve_paths(doc, folder)
    _expand_strategy(doc, folder, source)
    overrides = list(overrides)
    before = copy.deepcopy(doc) if overrides else None  # to tell the file's errors from the overrides'
    overridden: list[str] = []
    for item in overrides:
        key, value = parse_override(item)
        if key in ("groups", "tuning.groups"):  # K's old name
            where = key.removesuffix("groups")
            renamed_key({"groups": value}, "groups", "branches", where)
            key = where + "branches"
        try:
            check_document(value)
        except SpecError as exc:
            raise SpecError(exc.message, source="--set", key=key) from None
        if key == "strategy" or key.startswith("strategy."):
            _expand_strategy(doc, folder, source)
        _set_dotted(doc, key, value)
        if key == "strategy":
            _expand_strategy(doc, Path.cwd(), "--set")
        if key in (*(f"dataset.{k}" for k in _PATH_KEYS), "backbone.pretrained") and isinstance(value, str) and value:
            _set_dotted(doc, key, str(_expand_user(value).resolve()))
        if key == "reference":
            ref = doc["reference"]
            doc["reference"] = (
                [_absolute(r, Path.cwd()) for r in ref] if isinstance(ref, list) else _absolute(ref, Path.cwd())
            )
        overridden.append(key)
    try:
        check_document(doc)
    except SpecError as exc:
        raise SpecError(exc.message, source="--set" if overridden else source, key=exc.key) from None
    if not trust_code and (named := code_paths(doc)):
        key, code = named[0]
        raise SpecError(
            f"names code to import and run ({code!r}); dmtg runs it only with --trust-code: pass it if you "
            "trust this file and the folder it comes from",
            source=source,
            key=key,
        )
    try:
        return _validated(doc)
    except SpecError as exc:
        blame = _blame(exc, before, overridden) if before is not None else source
        raise SpecError(exc.message, source=blame or source, key=exc.key) from None


def _validated(doc: dict[str, Any]) -> SearchSpec:
    _user_tasks(doc)
    result = validate_model(SearchSpec, doc)
    check_spec(result)
    return result


def _blame(error: SpecError, before: dict[str, Any], overridden: list[str]) -> str | None:
    """``"--set"`` when the overrides caused ``error``, else None (the spec file did).

    An error at or under a key set with ``--set`` is the override's; otherwise the spec without the
    overrides is validated again: the same error there is the file's, none is the overrides' (they
    broke a parent or a neighbour: ``--set tasks.0.type=multiclass`` at ``tasks[0]``, ``--set
    dataset.name=table`` at ``dataset.group_sizes``, ``--set tasks.1.name=t0`` as a duplicate), and a
    different one leaves it to whether an override lies under the error's key.
    """
    key = re.sub(r"\[(\d+)\]", r".\1", error.key or "")
    if any(key == k or key.startswith(k + ".") for k in overridden):
        return "--set"
    try:
        _validated(before)
    except SpecError as exc:
        if (exc.message, exc.key) == (error.message, error.key):
            return None
        return "--set" if any(not key or k.startswith(key + ".") for k in overridden) else None
    except DmtgError:  # user data that fails to load: no verdict from it
        return None
    return "--set"


def _user_tasks(doc: dict[str, Any]) -> None:
    """A spec on user data (``dataset.name: module:function``) may omit ``tasks``: take the
    function's task definitions."""
    dataset = doc.get("dataset")
    if "tasks" in doc or not isinstance(dataset, dict):
        return
    name = dataset.get("name")
    if isinstance(name, str) and ":" in name:
        options = {k: v for k, v in dataset.items() if k != "name"}
        doc["tasks"] = user_tasks(name, options)


def load_strategy(ref: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> StrategyConfig:
    """Load and validate a strategy preset (name, path or mapping), with optional overrides."""
    if isinstance(ref, Mapping):
        doc = _apply_base(copy.deepcopy(dict(ref)), "strategies", None, (), "<strategy>")
        source = "<strategy>"
    else:
        doc, path = resolve_document(ref, "strategies")
        doc.setdefault("name", path.stem)
        source = str(path)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(doc, key, value)
    try:
        return validate_model(StrategyConfig, doc)
    except SpecError as exc:
        raise exc.located(source) from None
