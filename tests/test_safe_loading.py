"""Safe loading: YAML only through ``yaml.safe_load``, no eval/exec, model and weight files read with
``torch.load(weights_only=True)``, NPZ without pickle. A file carrying a pickled payload is refused
and the payload never runs."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import dmtg_nas
from dmtg_nas import DataError, DmtgError, SpecError
from dmtg_nas.cli import main
from dmtg_nas.config import BackboneConfig
from dmtg_nas.data.table import read_table
from dmtg_nas.network import load_model

from .conftest import planted_doc

PACKAGE = Path(dmtg_nas.__file__).resolve().parent


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.marker,)


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted callee name, call node) for every call in ``tree``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func, parts = node.func, []
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.append(func.id)
            out.append((".".join(reversed(parts)), node))
    return out


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def test_package_source_loads_nothing_unsafely() -> None:
    """A static audit of every module of the package."""
    problems = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(PACKAGE)
        for name, call in _calls(tree):
            line = f"{where}:{call.lineno} {name}"
            if name in ("eval", "exec", "compile", "__import__"):
                problems.append(f"{line}: evaluates code")
            elif name.startswith("yaml.") and name.split(".")[-1] in ("load", "load_all", "unsafe_load", "full_load"):
                problems.append(f"{line}: use yaml.safe_load")
            elif name in ("pickle.load", "pickle.loads", "dill.load", "marshal.load", "marshal.loads"):
                problems.append(f"{line}: unpickles")
            elif name == "torch.load" and _keyword(call, "weights_only") is not True:
                problems.append(f"{line}: torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") not in (None, False):
                problems.append(f"{line}: np.load with allow_pickle")
    assert problems == []


def test_model_file_with_a_pickled_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "model.pt"
    torch.save({"format": "dmtg-nas/grouped-network/1", "architecture": Payload(marker)}, evil)
    with pytest.raises(
        DmtgError,
        match=r"model\.pt: not a readable grouped-network file: it holds pickled Python objects \(posix\.mkdir\)",
    ):
        load_model(evil)
    assert not marker.exists()
    # the same file loaded without weights_only would have run the payload: the test can fail
    torch.load(evil, weights_only=False)
    assert marker.is_dir()


def test_retrain_refuses_a_model_file_with_a_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    spec = dmtg_nas.load_spec(planted_doc())
    (run / "config.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    (run / "grouping.json").write_text(json.dumps({"groups": [["t0", "t1"], ["t2", "t3"]]}))
    marker = tmp_path / "ran"
    torch.save({"state_dict": Payload(marker)}, run / "model.pt")
    code = main(["retrain", str(run), "--init", "search", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "not a readable grouped-network file: it holds pickled Python objects" in err
    assert not marker.exists()


def test_pretrained_weights_with_a_payload_are_refused(tmp_path: Path) -> None:
    from dmtg_nas.backbones import build_encoder

    marker = tmp_path / "ran"
    weights = tmp_path / "w.pth"
    torch.save({"conv1.weight": Payload(marker)}, weights)
    config = BackboneConfig(name="timm:test_resnet", pretrained=str(weights))  # type: ignore[call-arg]
    with pytest.raises(SpecError, match=r"w\.pth: refused: the weights file holds pickled Python objects") as info:
        build_encoder(config, (3, 32, 32))
    assert info.value.key == "backbone.pretrained"
    assert not marker.exists()


def test_npz_with_object_arrays_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "t.npz"
    np.savez(path, y=np.array([Payload(marker)], dtype=object), a=np.zeros(1))
    with pytest.raises(DataError, match=r"t\.npz: not a readable NPZ file \(Object arrays cannot be loaded"):
        read_table(path)
    doc = planted_doc(tasks=[{"name": "y", "type": "regression"}], groups=1)
    doc["dataset"] = {"name": "table", "path": str(path)}
    with pytest.raises(SpecError, match="array 'y' holds Python objects") as info:
        dmtg_nas.load_spec(doc)
    assert info.value.key == "dataset.path"
    assert not marker.exists()


def test_specs_are_read_with_a_safe_loader() -> None:
    """The spec loader only adds duplicate-key checks and YAML 1.2 floats to PyYAML's safe loader."""
    from dmtg_nas.config import SpecLoader, load_yaml

    assert issubclass(SpecLoader, yaml.SafeLoader)
    with pytest.raises(yaml.constructor.ConstructorError, match=r"python/object/apply:os\.mkdir"):
        load_yaml('a: !!python/object/apply:os.mkdir ["x"]\n')


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "spec.yaml"
    path.write_text(f'name: !!python/object/apply:os.mkdir ["{marker}"]\n')
    with pytest.raises(SpecError, match=r"invalid YAML at line 1, column 7: .*python/object/apply:os\.mkdir"):
        dmtg_nas.load_spec(path)
    assert not marker.exists()


TRUSTED_MODULE = """
from pathlib import Path

from user_dataset import sensors

Path(__file__).with_name("imported").write_text("yes")


def data(**options):
    return sensors(**options)
"""


def test_code_named_by_a_run_folder_needs_trust_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder's config.yaml naming `os:system` (called with a command) is refused by retrain and
    search --resume without importing anything; with --trust-code its data set is imported and used."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    doc = {
        "name": "evil",
        "dataset": {"name": "os:system", "command": f"touch {marker}"},
        "groups": 2,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    (run / "grouping.json").write_text(json.dumps({"groups": [["temperature", "humidity"], ["alarm", "mode"]]}))
    refusal = (
        f"dmtg: error: {run / 'config.yaml'}: dataset.name: names code to import and run ('os:system'); dmtg runs "
        "it only with --trust-code: pass it if you trust this file and the folder it comes from\n"
    )
    for argv in (["retrain", str(run), "-q"], ["search", "--resume", str(run), "-q"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == refusal
        assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "grouping.json"]

    # a harmless module: imported, and its data set trained on, only with --trust-code
    (tmp_path / "trusted_data.py").write_text(TRUSTED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PACKAGE.parent / "examples"))
    doc = {
        "name": "trusted",
        "dataset": {"name": "trusted_data:data", "samples": 200},
        "backbone": {"name": "mlp", "hidden": [8]},
        "branches": 2,
        "strategy": {"_base_": "dmtg", "epochs": 1, "batch_size": 64, "finetune": {"epochs": 0}},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(dmtg_nas.load_spec(doc).to_dict()))
    (tmp_path / "imported").unlink()  # load_spec above imported it
    assert main(["retrain", str(run), "-q", "--epochs", "1"]) == 2
    assert "trusted_data:data" in capsys.readouterr().err and not (tmp_path / "imported").exists()
    monkeypatch.delitem(__import__("sys").modules, "trusted_data")
    assert main(["retrain", str(run), "-q", "--epochs", "1", "--trust-code"]) == 0
    assert (tmp_path / "imported").read_text() == "yes" and (run / "retrain/metrics.json").is_file()


def test_a_weights_file_with_a_payload_is_refused_before_the_output_folder_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused when the spec is checked: no --out folder (no .lock, no config.yaml) is left to block a
    plain rerun once the file is fixed; the payload never runs."""
    marker = tmp_path / "ran"
    weights = tmp_path / "w.pth"
    torch.save({"conv1.weight": Payload(marker)}, weights)
    doc = planted_doc(backbone={"name": "timm:test_resnet", "pretrained": str(weights)})
    doc["dataset"] = {"name": "digits", "samples": 200}
    doc["tasks"] = [{"name": "digit", "type": "multiclass", "num_classes": 10}]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    for argv in (["search", str(spec), "--out", str(out), "-q"], ["search", str(spec), "--out", str(out), "-q"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (
            f"dmtg: error: backbone.pretrained: {weights}: refused: the weights file holds pickled Python "
            "objects, which are never loaded; use a state_dict of tensors (.pth) or .safetensors\n"
        )
    assert not out.exists() and not marker.exists()
