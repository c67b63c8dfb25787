"""Hostile input: generated malformed specs, files and ``--set`` overrides must each give the
project's own one-line error, exit code 2, no traceback and nothing written.

Every example runs ``dmtg validate`` and ``dmtg search --out`` in-process. The valid starting point
is a tiny planted spec, so a mutation that slipped through would fail the test (exit 0) after a
second of training rather than hang.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import string
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmtg_nas.backbones import MLPOptions
from dmtg_nas.cli import main
from dmtg_nas.config import (
    HeadsConfig,
    InitConfig,
    LRScheduleConfig,
    OptimizerConfig,
    SearchSpec,
    SpecDumper,
    SplitConfig,
    StrategyConfig,
    TaskConfig,
    TemperatureConfig,
)
from dmtg_nas.data import DATASETS
from dmtg_nas.data.planted import PlantedOptions
from dmtg_nas.presets import list_presets

TASK_NAMES = ["t0", "t1", "t2", "t3"]


def base_doc() -> dict[str, Any]:
    """A valid spec that trains in about a second."""
    return {
        "name": "tiny",
        "tasks": [{"name": t, "type": "regression"} for t in TASK_NAMES],
        "dataset": {"name": "planted", "group_sizes": [2, 2], "input_dim": 8, "latent_dim": 3, "samples": 200},
        "backbone": {"name": "mlp", "hidden": [8, 3]},
        "heads": {"hidden": [4]},
        "branches": 2,
        "strategy": {"_base_": "dmtg-plain", "epochs": 1, "batch_size": 64, "finetune": {"epochs": 0}},
    }


@dataclass
class Case:
    """One hostile input: the spec file's content (a mapping, YAML text or raw bytes), extra files
    next to it, ``--set`` overrides, and what the one-line error must contain."""

    kind: str
    spec: dict[str, Any] | str | bytes | None = None  # None: the spec path names no file
    overrides: list[str] = field(default_factory=list)
    expect: str | None = None  # a key path or message fragment the error must name
    spec_is_dir: bool = False


# ----------------------------------------------------------------------------------------------
# Paths into the base document and what each accepts
# ----------------------------------------------------------------------------------------------

Accepts = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_list(v: Any) -> bool:
    return isinstance(v, list)


def _is_map(v: Any) -> bool:
    return isinstance(v, dict)


def _one_of(*choices: str) -> Accepts:
    return lambda v: isinstance(v, str) and v in choices


PRESETS = set(list_presets("strategies")) | set(list_presets("search_spaces"))

# path (as in error messages) -> values that path accepts; everything else must be refused
TYPED_PATHS: dict[str, Accepts] = {
    "name": _is_str,
    "description": _is_str,
    "tasks": _is_list,
    "tasks[0]": _is_map,
    "tasks[0].name": _is_str,
    "tasks[0].type": lambda v: isinstance(v, str) and v in NAMED["tasks[0].type"],
    "tasks[0].weight": _is_num,
    "branches": _is_int,
    "dataset": _is_map,
    "dataset.name": _is_str,
    "dataset.samples": _is_int,
    "dataset.noise": _is_num,
    "dataset.group_sizes": _is_list,
    "dataset.split": _is_map,
    "dataset.split.val": _is_num,
    "dataset.relation": _one_of("random", "opposed"),
    "backbone": _is_map,
    "backbone.name": _is_str,
    "backbone.hidden": _is_list,
    "backbone.shared_stem": _is_int,
    "backbone.activation": _one_of("relu", "gelu", "tanh", "silu"),
    "heads": _is_map,
    "heads.hidden": _is_list,
    "heads.dropout": _is_num,
    "strategy": lambda v: _is_map(v) or (isinstance(v, str) and v in PRESETS),
    "strategy.epochs": _is_int,
    "strategy.batch_size": _is_int,
    "strategy.seed": _is_int,
    "strategy.sample": _one_of("soft", "hard"),
    "strategy.device": _one_of("auto", "cpu", "cuda"),
    "strategy.temperature": _is_map,
    "strategy.temperature.schedule": _one_of("constant", "linear", "exponential", "cosine"),
    "strategy.temperature.init": _is_num,
    "strategy.optimizer": _is_map,
    "strategy.optimizer.name": _one_of("adam", "adamw", "sgd"),
    "strategy.optimizer.lr": _is_num,
    "strategy.init.logits": _is_num,
    "strategy.finetune.epochs": _is_int,
    # a str or a list names files (covered by the path cases); an empty list names none, which is valid
    "reference": lambda v: v is None or v == [],
}

# mapping path -> the keys allowed there (any other key is an unknown key at that level)
MAPPINGS: dict[str, set[str]] = {
    "": set(SearchSpec.model_fields) | {"_base_"},
    "tasks[0]": set(TaskConfig.model_fields),
    "dataset": {"name", *PlantedOptions.model_fields},
    "dataset.split": set(SplitConfig.model_fields),
    "backbone": {"name", "shared_stem", *MLPOptions.model_fields},
    "heads": set(HeadsConfig.model_fields),
    "strategy": set(StrategyConfig.model_fields) | {"_base_"},
    "strategy.temperature": set(TemperatureConfig.model_fields),
    "strategy.optimizer": set(OptimizerConfig.model_fields),
    "strategy.lr_schedule": set(LRScheduleConfig.model_fields),
    "strategy.init": set(InitConfig.model_fields),
}

# numeric path -> values out of its range (including NaN, infinities and huge numbers)
_NONFINITE = st.sampled_from([math.nan, math.inf, -math.inf])
_HUGE = st.integers(min_value=2**31, max_value=10**30)
OUT_OF_RANGE: dict[str, st.SearchStrategy[Any]] = {
    "branches": st.one_of(st.integers(max_value=0), st.integers(min_value=65), _NONFINITE),
    "strategy.epochs": st.one_of(st.integers(max_value=0), st.integers(min_value=1_000_001), _HUGE),
    "strategy.batch_size": st.one_of(st.integers(max_value=0), st.integers(min_value=2**20 + 1)),
    "strategy.seed": st.one_of(st.integers(max_value=-1), _HUGE),
    "strategy.num_workers": st.one_of(st.integers(max_value=-1), st.integers(min_value=257)),
    "strategy.optimizer.lr": st.one_of(st.floats(max_value=0.0), _NONFINITE),
    "strategy.temperature.init": st.one_of(st.floats(max_value=0.0), _NONFINITE),
    "strategy.init.logits": _NONFINITE,
    "strategy.finetune.epochs": st.one_of(st.integers(max_value=-1), _HUGE),
    "strategy.warmup.samples": st.one_of(st.integers(max_value=7), _HUGE),
    "tasks[0].weight": st.one_of(st.floats(max_value=0.0), _NONFINITE),
    "dataset.samples": st.one_of(st.integers(max_value=9), st.integers(min_value=10_000_001)),
    "dataset.noise": st.one_of(st.floats(max_value=-1e-9), _NONFINITE),
    "dataset.input_dim": st.one_of(st.integers(max_value=0), st.integers(min_value=65_537)),
    "dataset.seed": st.one_of(st.integers(max_value=-1), _HUGE),
    "dataset.split.val": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), _NONFINITE),
    "backbone.hidden[0]": st.one_of(st.integers(max_value=0), st.integers(min_value=65_537)),
    "heads.dropout": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), _NONFINITE),
    "heads.hidden[0]": st.one_of(st.integers(max_value=0), _HUGE),
}

# name path -> the registered names (anything else is unknown)
NAMED: dict[str, set[str]] = {
    "dataset.name": set(DATASETS.names()),
    "backbone.name": {"mlp", "convnet", "celeba_resnet"},
    "strategy": PRESETS,
    "strategy.temperature.schedule": {"constant", "linear", "exponential", "cosine"},
    "strategy.optimizer.name": {"adam", "adamw", "sgd"},
    "strategy.lr_schedule.name": {"none", "step", "multistep", "plateau", "cosine"},
    "tasks[0].type": set(TaskConfig.model_fields["type"].annotation.__args__),  # type: ignore[union-attr]
    "tasks[0].loss": {"mse", "l1", "smooth_l1"},
}


def _parts(path: str) -> list[str | int]:
    out: list[str | int] = []
    for piece in path.replace("]", "").split("."):
        name, _, index = piece.partition("[")
        if name:
            out.append(name)
        if index:
            out.append(int(index))
    return out


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    node: Any = doc
    parts = _parts(path)
    for part in parts[:-1]:
        if isinstance(part, str) and part not in node:
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _dotted(path: str) -> str:
    return ".".join(str(p) for p in _parts(path))


def _override(path: str, value: Any) -> str:
    text = yaml.dump(value, Dumper=SpecDumper, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return f"{_dotted(path)}={text}"


# ----------------------------------------------------------------------------------------------
# Hypothesis strategies
# ----------------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=24)  # no lone surrogates
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63), st.floats(), _TEXT, st.dates()
)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)),
    max_leaves=12,
)
_KEY = st.text(string.ascii_letters + "_", min_size=1, max_size=12)


@st.composite
def wrong_type(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from(sorted(TYPED_PATHS)))
    value = draw(_JSONISH.filter(lambda v: not TYPED_PATHS[path](v)))
    doc = base_doc()
    via_set = draw(st.booleans())
    if via_set:
        return Case("wrong type (--set)", doc, [_override(path, value)], expect=path)
    _set(doc, path, value)
    return Case("wrong type", doc, expect=path)


@st.composite
def unknown_key(draw: st.DrawFn) -> Case:
    where = draw(st.sampled_from(sorted(MAPPINGS)))
    key = draw(_KEY.filter(lambda k: k not in MAPPINGS[where]))
    value = draw(_SCALARS)
    path = f"{where}.{key}" if where else key
    doc = base_doc()
    if draw(st.booleans()):
        return Case("unknown key (--set)", doc, [_override(path, value)], expect=path)
    _set(doc, path, value)
    return Case("unknown key", doc, expect=path)


@st.composite
def out_of_range(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    value = draw(OUT_OF_RANGE[path])
    doc = base_doc()
    if draw(st.booleans()) and not (isinstance(value, float) and not math.isfinite(value)):
        return Case("out of range (--set)", doc, [_override(path, value)], expect=path)
    _set(doc, path, value)
    return Case("out of range", doc, expect=path)


@st.composite
def unknown_name(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from(sorted(NAMED)))
    # no ':' (that names user code, 'module:function'), nothing registered
    name = draw(_TEXT.filter(lambda s: ":" not in s and s not in NAMED[path] and s.strip() == s))
    doc = base_doc()
    expect = "tasks[0]" if path == "tasks[0].loss" else path  # the loss is checked against the type
    if draw(st.booleans()) and "\x00" not in name:
        return Case("unknown name (--set)", doc, [_override(path, name)], expect=expect)
    _set(doc, path, name)
    return Case("unknown name", doc, expect=expect)


@st.composite
def bad_tasks_or_groups(draw: st.DrawFn) -> Case:
    doc = base_doc()
    choice = draw(st.sampled_from(["empty", "duplicate", "empty name", "branches", "no tasks key"]))
    if choice == "empty":
        doc["tasks"] = []
        return Case("empty task list", doc, expect="tasks")
    if choice == "duplicate":
        i = draw(st.integers(0, 3))
        doc["tasks"].insert(draw(st.integers(0, 4)), dict(doc["tasks"][i]))
        return Case("duplicate task", doc, expect=f"duplicate task name 't{i}'")
    if choice == "empty name":
        i = draw(st.integers(0, 3))
        doc["tasks"][i]["name"] = ""
        return Case("empty task name", doc, expect=f"tasks[{i}].name")
    if choice == "branches":
        k = draw(st.integers(max_value=0))
        return Case("branches K < 1", doc, [f"branches={k}"], expect="branches")
    del doc["tasks"]
    return Case("no tasks", doc, expect="tasks")


@st.composite
def deeply_wrong(draw: st.DrawFn) -> Case:
    """A whole section (or the whole document) replaced by random nested data."""
    section = draw(st.sampled_from(["tasks", "dataset", "backbone", "heads", "strategy", "tuning", "<document>"]))
    allowed = {
        "dataset": MAPPINGS["dataset"],
        "backbone": MAPPINGS["backbone"],
        "heads": MAPPINGS["heads"],
        "strategy": MAPPINGS["strategy"],
        "tuning": set(),
    }

    def invalid(value: Any) -> bool:
        if section == "tasks":  # a list of mappings with a valid name and type is not wrong enough
            return not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)) or any(
                set(v) - set(TaskConfig.model_fields) for v in value
            )
        if section == "<document>":
            return True  # no random value holds name, tasks, dataset and branches
        if isinstance(value, dict):
            if section in ("dataset", "backbone") and value.get("name") not in NAMED[f"{section}.name"]:
                return True  # no name, or an unknown one
            return bool(set(map(str, value)) - allowed[section])
        if section == "strategy" and isinstance(value, str):
            return value not in PRESETS
        return value is not None or section != "tuning"

    value = draw(_JSONISH.filter(invalid))
    if section == "<document>":
        return Case("random document", yaml.safe_dump(value) if not isinstance(value, str) else value)
    doc = base_doc()
    doc[section] = value
    return Case("random section", doc, expect=section)


@st.composite
def broken_yaml(draw: st.DrawFn) -> Case:
    text = yaml.safe_dump(base_doc(), sort_keys=False)
    lines = text.splitlines()
    how = draw(st.sampled_from(["unclosed flow", "unterminated quote", "tab indent", "random text", "bytes"]))
    if how == "unclosed flow":
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, "broken: [1, 2")
    elif how == "unterminated quote":
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, 'broken: "no end')
    elif how == "tab indent":
        nested = [i for i, line in enumerate(lines) if line.startswith("  ")]
        i = draw(st.sampled_from(nested))
        lines[i] = "\t" + lines[i].lstrip(" ")
    elif how == "random text":
        return Case("random text", draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=200)))
    else:
        blob = draw(st.binary(min_size=1, max_size=64))
        return Case("random bytes", b"\xff" + blob)  # 0xff never starts valid UTF-8
    return Case(f"YAML: {how}", "\n".join(lines) + "\n", expect="invalid YAML")


@st.composite
def bad_path(draw: st.DrawFn) -> Case:
    doc = base_doc()
    which = draw(
        st.sampled_from(
            [
                "spec missing",
                "spec is a folder",
                "table missing",
                "table is a folder",
                "table not UTF-8",
                "table empty",
                "table bad npz",
                "table pickled npz",
                "table suffix",
                "reference missing",
                "reference folder",
                "reference not UTF-8",
                "base missing",
                "base is a folder",
                "celeba root is a file",
                "long name",
                "unknown user",
            ]
        )
    )
    table = {"name": "table", "path": None}
    if which == "spec missing":
        return Case(which, None, expect="no file or shipped search space")
    if which == "spec is a folder":
        return Case(which, None, spec_is_dir=True, expect="is a folder")
    if which.startswith("table"):
        file = {
            "table missing": "missing.csv",
            "table is a folder": "folder.csv",
            "table not UTF-8": "garbage.csv",
            "table empty": "empty.csv",
            "table bad npz": "text.npz",
            "table pickled npz": "pickled.npz",
            "table suffix": "table.txt",
        }[which]
        doc["dataset"] = {**table, "path": file}
        return Case(which, doc, expect="dataset.path")
    if which.startswith("reference"):
        doc["reference"] = {
            "reference missing": "none.json",
            "reference folder": ".",
            "reference not UTF-8": "garbage.csv",
        }[which]
        return Case(which, doc, expect="reference")
    if which.startswith("base"):
        doc["_base_"] = "nothing.yaml" if which == "base missing" else "folder.csv"
        return Case(which, doc, expect="_base_")
    if which == "celeba root is a file":
        doc["tasks"] = [{"name": "Smiling", "type": "binary"}]
        doc["dataset"] = {"name": "celeba", "root": "garbage.csv"}
        return Case(which, doc, expect="dataset.root")
    if which == "long name":
        n = draw(st.integers(300, 5000))
        doc["strategy"] = "s" * n
        return Case(which, doc, expect="strategy")
    doc["dataset"] = {**table, "path": "~no_such_user_here/t.csv"}
    return Case(which, doc, expect="dataset.path")


@st.composite
def bad_override(draw: st.DrawFn) -> Case:
    item = draw(
        st.sampled_from(
            ["noequals", "=1", ".a=1", "a..b=1", "tasks.9.name=x", "tasks.x.name=y", "tasks.-1.name=z", "groups.k=1"]
        )
    )
    return Case("malformed --set", base_doc(), [item], expect=None)


_BAD_CHARS = st.sampled_from(["/", "\\", "\x1b", "\n", "\t", "\x00", "\x7f", "\r"])


@st.composite
def hostile_task_name(draw: st.DrawFn) -> Case:
    """A task name NNI's labels, the file system or a terminal would refuse: a '/', a backslash or a
    control character somewhere in it, or exactly '.' or '..'."""
    if draw(st.booleans()):
        name = draw(st.sampled_from([".", ".."]))
    else:
        head = draw(st.text(string.ascii_letters, max_size=6))
        name = head + draw(_BAD_CHARS) + draw(st.text(string.ascii_letters, max_size=6))
    doc = base_doc()
    i = draw(st.integers(0, len(TASK_NAMES) - 1))
    if "\x00" in name:  # a NUL is refused first, as a NUL
        return Case("hostile task name", doc, [f"tasks.{i}.name={name}"], expect="--set")
    doc["tasks"][i] = {"name": name, "type": "regression"}
    return Case("hostile task name", doc, expect=f"tasks[{i}].name")


HOSTILE = st.one_of(
    hostile_task_name(),
    wrong_type(),
    unknown_key(),
    out_of_range(),
    unknown_name(),
    bad_tasks_or_groups(),
    deeply_wrong(),
    broken_yaml(),
    bad_path(),
    bad_override(),
)


# ----------------------------------------------------------------------------------------------
# Running one case
# ----------------------------------------------------------------------------------------------


def _fixture_files(folder: Path) -> None:
    (folder / "garbage.csv").write_bytes(b"\xff\xfe\x00\x81 not text\n")
    (folder / "empty.csv").write_text("")
    (folder / "folder.csv").mkdir()
    (folder / "text.npz").write_text("t0,t1\n1,2\n")
    columns = {t: np.zeros(1) for t in TASK_NAMES[1:]}
    np.savez(folder / "pickled.npz", t0=np.array([{"a": 1}], dtype=object), x=np.zeros(1), **columns)
    (folder / "table.txt").write_text("a,t0\n1,2\n")


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def check_refused(case: Case, folder: Path) -> None:
    """Run validate and search on ``case`` inside ``folder``; assert the clean refusal."""
    _fixture_files(folder)
    spec_path = folder / "spec.yaml"
    if case.spec_is_dir:
        spec_path.mkdir()
    elif isinstance(case.spec, bytes):
        spec_path.write_bytes(case.spec)
    elif isinstance(case.spec, str):
        spec_path.write_text(case.spec, encoding="utf-8")
    elif case.spec is not None:
        text = yaml.dump(case.spec, Dumper=SpecDumper, sort_keys=False, allow_unicode=True)  # '1e3' stays a string
        spec_path.write_text(text, encoding="utf-8")
    before = sorted(p.name for p in folder.iterdir())
    sets = [a for o in case.overrides for a in ("--set", o)]
    out_dir = folder / "run"
    for argv in (["validate", str(spec_path), *sets], ["search", str(spec_path), "--out", str(out_dir), "-q", *sets]):
        code, stdout, stderr = _run(argv)
        lines = stderr.strip().splitlines()
        context = f"{case.kind}: {argv[0]} {case.overrides} -> exit {code}, stderr {stderr[-800:]!r}"
        assert code == 2, context
        assert len(lines) == 1 and lines[0].startswith("dmtg: error: "), context
        assert "Traceback" not in stderr and stdout == "", context
        if case.expect is not None:
            # a NUL in an override is refused first, under the key path as typed: also a clean refusal
            nul = any("\\0" in o or "\0" in o for o in case.overrides) and "contains a NUL" in lines[0]
            assert case.expect in lines[0] or nul, context
        assert not out_dir.exists(), context
        assert sorted(p.name for p in folder.iterdir()) == before, context  # nothing else written either


@settings(
    max_examples=int(os.environ.get("DMTG_HOSTILE_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # the same 300 cases on every run, so CI is reproducible; DMTG_HOSTILE_RANDOM=1 explores new ones
    derandomize=os.environ.get("DMTG_HOSTILE_RANDOM") != "1",
)
@given(case=HOSTILE)
def test_hostile_specs_are_refused_cleanly(case: Case) -> None:
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # a default output folder (runs/) would appear here
        try:
            check_refused(case, Path(tmp))
        finally:
            os.chdir(cwd)


# ----------------------------------------------------------------------------------------------
# The problems the generated cases found, pinned as examples
# ----------------------------------------------------------------------------------------------


def _alias_bomb(levels: int = 7) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def _task_named(name: str) -> dict[str, Any]:
    doc = base_doc()
    doc["tasks"][0]["name"] = name
    return doc


PINNED = [
    Case("infinite learning rate", {**base_doc(), "strategy": {"optimizer": {"lr": math.inf}}}, expect="finite"),
    Case("NaN logits", base_doc(), ["strategy.init.logits=.nan"], expect="strategy.init.logits"),
    Case("1e30 epochs", base_doc(), [f"strategy.epochs={10**30}"], expect="strategy.epochs"),
    Case("negative seed", base_doc(), ["strategy.seed=-1"], expect="strategy.seed"),
    Case("huge hidden layer", base_doc(), ["backbone.hidden=[1000000000000]"], expect="backbone.hidden[0]"),
    Case("bool as int", base_doc(), ["branches=true"], expect="branches: expected an integer, got True"),
    Case("NUL in a path", {**base_doc(), "reference": "a\x00b"}, expect="reference: contains a NUL"),
    Case("NUL via --set", base_doc(), ["dataset.name=a\x00b"], expect="dataset.name"),
    Case("name with a slash", {**base_doc(), "name": "../../elsewhere"}, expect="name"),
    Case("alias bomb", _alias_bomb(), expect="more than"),
    Case("deep nesting", "a: " + "[" * 3000 + "]" * 3000 + "\n", expect="deeper than"),
    Case("document is a list", "- 1\n- 2\n", expect="must be a mapping, got list"),
    Case("not UTF-8", b"name: \xff\xfe\n", expect="not a UTF-8 text file"),
    Case("pickled NPZ", {**base_doc(), "dataset": {"name": "table", "path": "pickled.npz"}}, expect="dataset.path"),
    Case("text as NPZ", {**base_doc(), "dataset": {"name": "table", "path": "text.npz"}}, expect="not an NPZ"),
    Case("CSV not UTF-8", {**base_doc(), "dataset": {"name": "table", "path": "garbage.csv"}}, expect="not a UTF-8"),
    Case("long strategy name", {**base_doc(), "strategy": "s" * 4000}, expect="File name too long"),
    Case("~user without home", {**base_doc(), "strategy": "~no_such_user_here/s.yaml"}, expect="strategy"),
    Case("NaN split fraction", base_doc(), ["dataset.split={val: .nan}"], expect="dataset.split.val"),
    # NNI labels cannot hold '/': these passed validation and failed with a traceback in the search
    Case("task name with a slash", _task_named("a/b"), expect="tasks[0].name: task name 'a/b' is used as an NNI"),
    Case("task name '..'", _task_named(".."), expect="tasks[0].name: task name '..' is used as an NNI label"),
    Case("task name via --set", base_doc(), ["tasks.0.name=../t0"], expect="--set: tasks[0].name: task name"),
    Case("task name with an escape", _task_named("a\x1b[31mb"), expect="tasks[0].name: task name 'a\\x1b[31mb'"),
    Case("key twice", yaml.safe_dump(base_doc()) + "branches: 3\n", expect="duplicate key 'branches' (first at line"),
    Case("key twice via --set", base_doc(), ["heads={dropout: 0.1, dropout: 0.2}"], expect="duplicate key 'dropout'"),
    Case("--set breaks its parent", base_doc(), ["tasks.0.type=multiclass"], expect="--set: tasks[0]: a multiclass"),
    Case("name of 101 bytes", {**base_doc(), "name": "n" * 101}, expect="name: name 'nnnn"),
    Case("name of 51 two-byte letters", base_doc(), ["name=" + "é" * 51], expect="is 102 bytes long (UTF-8)"),
]


@pytest.mark.parametrize("case", PINNED, ids=[c.kind for c in PINNED])
def test_pinned_hostile_specs(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    check_refused(case, tmp_path)


def test_out_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(base_doc()))
    target = tmp_path / "taken"
    target.write_text("keep me")
    code = main(["search", str(spec), "--out", str(target), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"dmtg: error: --out {target}: a file is in the way; give a folder (new or empty)\n"
    assert target.read_text() == "keep me"


# ---------------------------------------------------------------------------- the file system says no

root = os.geteuid() == 0 if hasattr(os, "geteuid") else False
needs_permissions = pytest.mark.skipif(
    root, reason="root ignores permission bits: chmod cannot make a folder read-only"
)


def _search_spec(folder: Path) -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(base_doc()))
    return spec


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("file/run", "--out {out}: {tmp}/file is not a folder"),
        ("file/a/b", "--out {out}: {tmp}/file is not a folder"),
        ("/proc/dmtg-x", "--out {out}: cannot write in /proc: No such file or directory"),
    ],
)
def test_out_the_file_system_refuses_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str, message: str
) -> None:
    """A path under a regular file (fails for root too) or in /proc: refused before anything runs."""
    (tmp_path / "file").write_text("keep me")
    target = out if out.startswith("/") else str(tmp_path / out)
    for command in (["search", str(_search_spec(tmp_path))], ["retrain", str(tmp_path)]):
        code = main([*command, "--out", target, "-q"])
        err = capsys.readouterr().err
        assert code == 2 and err == "dmtg: error: " + message.format(out=target, tmp=tmp_path) + "\n"
    assert (tmp_path / "file").read_text() == "keep me"


@needs_permissions
def test_read_only_out_and_resume_folders_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _search_spec(tmp_path)
    locked = tmp_path / "ro"
    locked.mkdir()
    (locked / "config.yaml").write_text(yaml.safe_dump(base_doc()))
    locked.chmod(0o555)
    try:
        for out in (locked, locked / "run"):
            assert main(["search", str(spec), "--out", str(out), "-q"]) == 2
            assert capsys.readouterr().err == f"dmtg: error: --out {out}: cannot write in {locked}: Permission denied\n"
        assert main(["search", "--resume", str(locked), "-q"]) == 2
        err = capsys.readouterr().err
        assert err == f"dmtg: error: {locked}: cannot write its run lock {locked}/.lock: Permission denied\n"
    finally:
        locked.chmod(0o755)


def test_data_and_spec_files_that_are_not_regular_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """/dev/zero or a FIFO would be read forever: "not a regular file", not "file not found"."""
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    for path, kind in ((Path("/dev/zero"), "a character device"), (fifo, "a FIFO")):
        dataset = f"dataset={{name: table, path: '{path}'}}"
        assert main(["validate", str(_search_spec(tmp_path)), "--set", dataset]) == 2
        assert capsys.readouterr().err == f"dmtg: error: --set: dataset.path: not a regular file ({kind}): {path}\n"
        assert main(["validate", str(path)]) == 2
        assert capsys.readouterr().err == f"dmtg: error: {path}: not a regular file ({kind}); give a YAML file\n"
    assert (
        main(["validate", str(_search_spec(tmp_path)), "--set", f"dataset={{name: table, path: '{tmp_path}/no.csv'}}"])
        == 2
    )
    assert capsys.readouterr().err == f"dmtg: error: --set: dataset.path: file not found: {tmp_path}/no.csv\n"


def test_resume_where_the_run_lock_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lock file cannot be opened (a folder in its place: refused for root too): one line naming
    it, exit code 2, before anything loads; nothing in the folder changes."""
    run = tmp_path / "run"
    (run / ".lock").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(base_doc()))
    assert main(["search", "--resume", str(run), "-q"]) == 2
    err = capsys.readouterr().err
    assert err == f"dmtg: error: {run}: cannot write its run lock {run}/.lock: Is a directory\n"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml"]


# ----------------------------------------------------------------------------------------------
# Generated run-time targets: tables too small to split, ports, output folders
# ----------------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 5), val=st.sampled_from([0.1, 0.2]))
def test_tables_too_small_to_split_are_refused_before_writing(rows: int, val: float) -> None:
    """A table of a few rows leaves a split empty: one line naming the split, exit 2, no run folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        lines = ["x," + ",".join(TASK_NAMES)] + [f"{r},{r},{r},{r},{r}" for r in range(rows)]
        (folder / "tiny.csv").write_text("\n".join(lines) + "\n")
        doc = {**base_doc(), "dataset": {"name": "table", "path": str(folder / "tiny.csv"), "split": {"val": val}}}
        (folder / "spec.yaml").write_text(yaml.safe_dump(doc))
        code, stdout, stderr = _run(["search", str(folder / "spec.yaml"), "--out", str(folder / "run"), "-q"])
        assert code == 2 and stdout == "", stderr
        (line,) = stderr.strip().splitlines()
        assert line.startswith("dmtg: error: ") and "split is empty" in line, line
        assert not (folder / "run").exists()


@settings(max_examples=20, deadline=None, derandomize=True)
@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536, max_value=10**12)))
def test_generated_portal_ports_out_of_range_are_usage_errors(port: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
                main(["portal", "planted", "--port", str(port)])
            assert info.value.code == 2
            assert err.getvalue().splitlines()[-1] == (
                f"dmtg portal: error: argument --port: must be 1 to 65535, got {port}"
            )
            assert list(Path(tmp).iterdir()) == []
        finally:
            os.chdir(cwd)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    where=st.sampled_from(["under a file", "in /proc", "in /sys"]),
    tail=st.text(string.ascii_letters + "_", min_size=1, max_size=10),
)
def test_generated_output_folders_the_file_system_refuses(where: str, tail: str) -> None:
    """--out under a regular file, or in a kernel file system: one line naming the path, exit 2."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "file").write_text("keep me")
        spec = folder / "spec.yaml"
        spec.write_text(yaml.safe_dump(base_doc()))
        out = {"under a file": f"{folder}/file/{tail}", "in /proc": f"/proc/{tail}", "in /sys": f"/sys/{tail}"}[where]
        code, stdout, stderr = _run(["search", str(spec), "--out", out, "-q"])
        assert code == 2 and stdout == "", stderr
        (line,) = stderr.strip().splitlines()
        assert line.startswith(f"dmtg: error: --out {out}") and "Traceback" not in stderr, line
        assert (folder / "file").read_text() == "keep me"
