"""Spec loading, inheritance, overrides and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dmtg_nas import SpecError, load_spec, load_strategy
from dmtg_nas.config import dump_yaml, load_yaml, parse_override

from .conftest import planted_doc


def test_shipped_spec_loads_with_strategy_preset() -> None:
    spec = load_spec("planted")
    assert spec.groups == 3
    assert len(spec.tasks) == 9
    assert spec.strategy.name == "dmtg"
    assert spec.dataset.model_extra == {
        "group_sizes": [2, 3, 4],
        "input_dim": 32,
        "latent_dim": 8,
        "noise": 0.1,
        "samples": 4000,
        "seed": 0,
        "split": {"val": 0.2, "test": 0.2, "seed": 0},
    }


def test_overrides_reach_nested_keys_and_parse_yaml_values() -> None:
    spec = load_spec(
        "planted",
        [
            "branches=4",
            "strategy.epochs=7",
            "dataset.seed=3",
            "strategy.temperature.schedule=linear",
            "heads.hidden=[5]",
        ],
    )
    assert spec.groups == 4
    assert spec.strategy.epochs == 7
    assert spec.dataset.model_extra is not None and spec.dataset.model_extra["seed"] == 3
    assert spec.strategy.temperature.schedule == "linear"
    assert spec.heads.hidden == [5]


def test_override_replaces_strategy_by_preset_then_edits_it() -> None:
    spec = load_spec("planted", ["strategy=paper-celeba", "strategy.epochs=3"])
    assert spec.strategy.name == "paper-celeba"
    assert spec.strategy.lr_schedule.name == "step" and spec.strategy.lr_schedule.step_size == 15
    assert spec.strategy.optimizer.lr == pytest.approx(8e-4)
    assert spec.strategy.epochs == 3


def test_paper_preset_is_the_reference_recipe() -> None:
    s = load_strategy("paper-celeba")
    assert (s.optimizer.name, s.optimizer.lr, s.optimizer.logits_lr) == ("adam", 8e-4, None)
    assert (s.temperature.schedule, s.temperature.init) == ("constant", 2.5)
    assert (s.epochs, s.batch_size, s.sample, s.entropy_weight) == (100, 256, "soft", 0.0)
    assert (s.init.branches, s.init.logits, s.finetune.epochs) == ("copy", 1.0, 0)
    assert (s.lr_schedule.name, s.lr_schedule.step_size, s.lr_schedule.gamma) == ("step", 15, 0.5)


def test_base_inheritance_between_files(write_yaml) -> None:
    base = planted_doc(name="base")
    write_yaml("base.yaml", base)
    child = write_yaml("child.yaml", {"_base_": "base.yaml", "name": "child", "groups": 1})
    spec = load_spec(child)
    assert spec.name == "child" and spec.groups == 1
    assert [t.name for t in spec.tasks] == ["t0", "t1", "t2", "t3"]
    assert spec.strategy.epochs == 2  # inline strategy with _base_: dmtg, then edited


def test_base_cycle_is_reported(write_yaml) -> None:
    write_yaml("a.yaml", {"_base_": "b.yaml"})
    b = write_yaml("b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(SpecError, match="cycle"):
        load_spec(b)


def test_relative_table_path_resolves_against_the_spec_folder(write_yaml, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.csv").write_text("x,y\n1,2\n3,4\n")
    doc = planted_doc(
        tasks=[{"name": "y", "type": "regression"}], dataset={"name": "table", "path": "data/t.csv"}, groups=1
    )
    spec = load_spec(write_yaml("s.yaml", doc))
    assert spec.dataset.model_extra is not None
    assert Path(spec.dataset.model_extra["path"]) == (tmp_path / "data" / "t.csv").resolve()


@pytest.mark.parametrize(
    ("change", "overrides", "key", "fragment"),
    [
        ({"branchs": 3}, [], "branchs", "unknown key 'branchs' (did you mean 'branches'?)"),
        ({}, ["branches=0"], "branches", "greater than or equal to 1, got 0"),
        ({}, ["branches=three"], "branches", "expected an integer, got 'three'"),
        # a number or a named value: the message gives both
        ({}, ["strategy.num_workers=many"], "strategy.num_workers", "expected an integer or 'auto', got 'many'"),
        ({}, ["strategy.warmup.width=wide"], "strategy.warmup.width", "expected a number or 'auto', got 'wide'"),
        ({}, ["strategy.warmup.width=1.5"], "strategy.warmup.width", "less than or equal to 1, got 1.5"),
        ({}, ["strategy.temperature.schedule=cosin"], "strategy.temperature.schedule", "did you mean 'cosine'"),
        ({}, ["strategy.optimizer.nme=adam"], "strategy.optimizer.nme", "did you mean 'name'"),
        ({}, ["tasks.1.type=regresion"], "tasks[1].type", "did you mean 'regression'"),
        ({}, ["tasks.1.name=t0"], "", "duplicate task name 't0'"),
        ({}, ["dataset.name=plantd"], "dataset.name", "unknown dataset 'plantd' (did you mean 'planted'?)"),
        ({}, ["backbone.name=mpl"], "backbone.name", "did you mean 'mlp'"),
        ({}, ["backbone.hidden=[0]"], "backbone.hidden[0]", "greater than or equal to 1"),
        ({}, ["strategy=dmgt"], "strategy", "did you mean 'dmtg'"),
        ({}, ["dataset.group_sizes=[2, 3]"], "dataset.group_sizes", "add up to 5 tasks, but the spec lists 4"),
        ({"tasks": [{"name": "m", "type": "multiclass"}]}, [], "tasks[0]", "needs 'num_classes'"),
        ({"tasks": []}, [], "tasks", "at least 1 item"),
        # errors the overrides cause above or beside the key they set are theirs too
        ({}, ["tasks.0.type=multiclass"], "tasks[0]", "a multiclass task needs 'num_classes'"),
        ({}, ["dataset.split.val=0.9"], "dataset.split", "val + test must be below 1, got 0.9 + 0.1"),
        ({}, ["dataset.name=digits"], "dataset.group_sizes", "unknown key 'group_sizes'"),
    ],
)
def test_bad_specs_name_file_key_value_and_choices(write_yaml, change, overrides, key, fragment) -> None:
    path = write_yaml("bad.yaml", planted_doc(**change))
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    err = info.value
    assert fragment in str(err)
    assert (err.key or "") == key
    assert err.source == ("--set" if overrides else str(path))
    assert "\n" not in str(err)


def test_unknown_timm_model_is_found_when_the_components_are_resolved(write_yaml) -> None:
    """The spec layer checks the form ``timm:<model>`` and the options without torch; whether timm has
    the model is checked one layer up (``dmtg validate``, and before a search loads anything)."""
    from dmtg_nas.components import validate_components

    path = write_yaml("bad.yaml", planted_doc(backbone={"name": "timm:resnet10x"}))
    spec = load_spec(path)
    with pytest.raises(SpecError, match="unknown timm model 'resnet10x'") as info:
        validate_components(spec)
    assert info.value.key == "backbone.name"


def test_loading_a_spec_imports_neither_torch_nor_nni() -> None:
    """``dmtg_nas.config`` is the spec layer: loading and validating a shipped spec (data set and
    encoder names, options, files) in a fresh interpreter leaves torch, NNI and timm unimported."""
    import subprocess
    import sys

    code = (
        "import sys, dmtg_nas.config as c\n"
        "for name in ('planted', 'digits', 'planted6'):\n"
        "    c.load_spec(name, ['strategy=dmtg-fast'])\n"
        "c.load_spec('digits', ['backbone={name: timm:test_resnet}'])\n"
        "heavy = sorted(m for m in ('torch', 'nni', 'timm', 'pytorch_lightning') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_table_file_is_a_spec_error(write_yaml, tmp_path: Path) -> None:
    doc = planted_doc(tasks=[{"name": "y", "type": "regression"}], dataset={"name": "table", "path": "nope.csv"})
    with pytest.raises(SpecError, match=r"file not found: .*nope\.csv") as info:
        load_spec(write_yaml("s.yaml", doc))
    assert info.value.key == "dataset.path"


def test_broken_yaml_reports_line(write_yaml) -> None:
    path = write_yaml("broken.yaml", "name: x\ntasks: [\n")
    with pytest.raises(SpecError, match="invalid YAML at line") as info:
        load_spec(path)
    assert info.value.source == str(path)


def test_non_mapping_document_is_refused(write_yaml) -> None:
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(write_yaml("list.yaml", "- 1\n- 2\n"))


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(SpecError, match=r"dotted\.key=value"):
        parse_override(bad)


def test_fast_preset_is_the_default_with_a_short_search_and_no_check() -> None:
    fast, default = load_strategy("dmtg-fast"), load_strategy("dmtg")
    assert (fast.epochs, fast.finetune.epochs, fast.finetune.init) == (10, 40, "search")
    assert fast.epochs + fast.finetune.epochs == default.epochs + default.finetune.epochs  # same budget
    assert fast.local_search.enabled is False and default.local_search.enabled == "auto"
    same = ("warmup", "temperature", "optimizer", "init", "batch_size", "sample", "seed")
    assert all(getattr(fast, key) == getattr(default, key) for key in same)


def test_names_used_in_folder_names_and_labels_are_limited() -> None:
    """The spec's name goes into folder names (at most 100 bytes), task names into NNI labels (no
    '/'); names that are merely unusual stay allowed."""
    assert load_spec(planted_doc(name="n" * 100)).name == "n" * 100
    with pytest.raises(SpecError, match=r"is 101 bytes long \(UTF-8\), at most 100") as info:
        load_spec(planted_doc(name="n" * 101))
    assert info.value.key == "name"
    tasks = [{"name": n, "type": "regression"} for n in ("a.b", "x y", "ü", "...")]
    assert load_spec(planted_doc(tasks=tasks)).task_names == ["a.b", "x y", "ü", "..."]
    for bad in ("a/b", "a\\b", ".", "..", "tab\there"):
        with pytest.raises(SpecError, match="is used as an NNI label") as info:
            load_spec(planted_doc(tasks=[{"name": bad, "type": "regression"}, *tasks[1:]]))
        assert info.value.key == "tasks[0].name"


def test_a_key_given_twice_is_refused_naming_key_and_file(write_yaml, tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys silently; a spec or strategy file that says two things
    is refused, naming the key, the file and both lines."""
    text = yaml.safe_dump(planted_doc(), sort_keys=False)
    spec = write_yaml("twice.yaml", text + "branches: 3\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    line = text.splitlines().index("branches: 2") + 1
    count = len(text.splitlines()) + 1
    assert (
        str(info.value)
        == f"{spec}: invalid YAML at line {count}, column 1: duplicate key 'branches' (first at line {line})"
    )
    write_yaml("strategy.yaml", "_base_: dmtg\nepochs: 2\noptimizer:\n  lr: 0.01\n  lr: 0.1\n")
    with pytest.raises(SpecError) as info:
        load_spec(write_yaml("s.yaml", planted_doc(strategy="strategy.yaml")))
    where = f"{tmp_path / 'strategy.yaml'}: strategy: invalid YAML at line 5, column 3"
    assert str(info.value) == f"{where}: duplicate key 'lr' (first at line 4)"
    with pytest.raises(SpecError, match=r"^--set: dataset\.split: duplicate key 'val' in the value$"):
        load_spec(write_yaml("ok.yaml", planted_doc()), ["dataset.split={val: 0.1, val: 0.2}"])
    # keys merged in with '<<' may be overridden, as YAML intends
    assert load_yaml("a: &a {x: 1, y: 2}\nb: {<<: *a, x: 3}\n") == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


def test_numbers_in_exponent_form_are_numbers(write_yaml) -> None:
    """YAML 1.1 reads 1e-3 (no dot, or no sign in the exponent) as a string; specs read it as YAML
    1.2 does, in files and --set alike."""
    doc = planted_doc()
    doc["strategy"]["optimizer"] = {"lr": "LR"}
    path = write_yaml("exp.yaml", yaml.safe_dump(doc).replace("LR", "1e-3"))
    assert load_spec(path).strategy.optimizer.lr == 0.001
    spec = load_spec(path, ["strategy.optimizer.lr=1.5e-2", "strategy.optimizer.logits_lr=2E+1"])
    assert (spec.strategy.optimizer.lr, spec.strategy.optimizer.logits_lr) == (0.015, 20.0)
    assert parse_override("a=1e3") == ("a", 1000.0) and parse_override("a=e3") == ("a", "e3")
    with pytest.raises(SpecError, match=r"^--set: strategy\.epochs: expected an integer, got 1000\.0 \(float\)$"):
        load_spec(path, ["strategy.epochs=1e3"])
    # what a run writes (config.yaml) reads back the same: the string '1e3' stays a string
    written = dump_yaml({"description": "1e3", "lr": 0.001, "tiny": 1e-20})
    assert load_yaml(written) == {"description": "1e3", "lr": 0.001, "tiny": 1e-20}
    spec = load_spec(planted_doc(description="1e3"))
    assert load_spec(write_yaml("config.yaml", dump_yaml(spec.to_dict()))) == spec


@pytest.mark.parametrize(
    ("change", "overrides", "key"),
    [
        # the file's own error, with an unrelated override
        ({"tasks": [{"name": "m", "type": "multiclass"}]}, ["groups=1"], "tasks[0]"),
        # the file's own error, under a key the overrides touch but do not cause
        ({"tasks": [{"name": "m", "type": "multiclass"}]}, ["tasks.0.weight=2.0"], "tasks[0]"),
        # an override fixes one error of the file; the next one is still the file's
        (
            {"tasks": [{"name": "m", "type": "multiclass"}], "backbone": {"name": "mlp", "hiden": [8]}},
            ["backbone={name: mlp}"],
            "tasks[0]",
        ),
    ],
)
def test_errors_of_the_file_are_not_blamed_on_set(write_yaml, change, overrides, key) -> None:
    path = write_yaml("bad.yaml", planted_doc(**change))
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    assert (info.value.source, info.value.key) == (str(path), key)
    assert "needs 'num_classes'" in info.value.message


@pytest.fixture()
def fresh_renames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which old key names were warned about (the notice is once per process)."""
    import dmtg_nas.schema

    monkeypatch.setattr(dmtg_nas.schema, "_RENAMED", set())


def test_branches_is_k_and_groups_its_old_name_warned_once(
    write_yaml, fresh_renames: None, caplog: pytest.LogCaptureFixture
) -> None:
    spec = load_spec(planted_doc(branches=3))
    assert spec.branches == spec.groups == 3 and "branches" in spec.to_dict() and "groups" not in spec.to_dict()
    assert not caplog.records
    old = {k: v for k, v in planted_doc().items() if k != "branches"} | {"groups": 3}
    assert load_spec(old).branches == 3
    assert load_spec(old, ["groups=4"]).branches == 4
    assert load_spec(planted_doc(), ["groups=4"]).branches == 4  # --set groups sets branches
    assert [r.getMessage() for r in caplog.records] == [
        "groups is deprecated: call it branches (the number of branches, K)"
    ]
    # a base with the old name and a child with the new one: the child's wins
    base = write_yaml("base.yaml", old)
    child = write_yaml("child.yaml", {"_base_": str(base), "branches": 1})
    assert load_spec(child).branches == 1
    with pytest.raises(SpecError, match=r"give branches only \(groups is its old name\)"):
        load_spec(old | {"branches": 2})


def test_tuning_branches_range_and_its_old_name(fresh_renames: None, caplog: pytest.LogCaptureFixture) -> None:
    spec = load_spec(planted_doc(tuning={"groups": [2, 3]}))
    assert spec.tuning is not None and spec.tuning.branches == [2, 3]
    assert [r.getMessage() for r in caplog.records] == [
        "tuning.groups is deprecated: call it tuning.branches (the number of branches, K)"
    ]
    with pytest.raises(SpecError, match=r"branches must be at most 64, got \[2, 65\]"):
        load_spec(planted_doc(tuning={"branches": [2, 65]}))
