"""The built wheel carries the shipped presets and finds them by bare name outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_presets_usable_by_name(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("dmtg_nas-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml"))
    assert sorted(Path(n).name for n in names if n.startswith("dmtg_nas/search_spaces/")) == shipped
    assert "dmtg_nas/strategies/paper-celeba.yaml" in names and "dmtg_nas/py.typed" in names
    assert not any(n.startswith(("tests/", "examples/")) for n in names)

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = (
        "import dmtg_nas, dmtg_nas.presets as p;"
        "s = dmtg_nas.load_spec('planted', ['strategy=paper-celeba']);"
        "print(dmtg_nas.__file__, p.preset_dir('strategies'), s.strategy.name)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(target), "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    module_file, strategies_dir, name = proc.stdout.split()
    assert module_file.startswith(str(target)) and strategies_dir.startswith(str(target))
    assert name == "paper-celeba"
