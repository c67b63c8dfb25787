"""Shared fixtures: small specs that train in seconds on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

warnings.filterwarnings("ignore", message=".*is found to be not a nn.Module.*")

torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[1]


def run_python(
    args: Sequence[str], cwd: Path, timeout: float, drop: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a fresh process with this checkout first on its path (the environment's
    variables ``drop`` left out); fails the test, with the end of its stderr, unless it succeeds."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for key in drop:
        env.pop(key, None)
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def planted_doc(**overrides: Any) -> dict[str, Any]:
    """A 4-task planted spec as a mapping (2 groups of 2, K=2, tiny mlp)."""
    doc: dict[str, Any] = {
        "name": "tiny",
        "tasks": [{"name": f"t{i}", "type": "regression"} for i in range(4)],
        "dataset": {"name": "planted", "group_sizes": [2, 2], "input_dim": 8, "latent_dim": 3, "samples": 400},
        "backbone": {"name": "mlp", "hidden": [8, 3]},
        "branches": 2,
        # the warm start's 400-step minimum is for real data; tests keep it to its epochs
        "strategy": {
            "_base_": "dmtg",
            "epochs": 2,
            "batch_size": 64,
            "finetune": {"epochs": 0},
            "warmup": {"min_steps": 0},
        },
    }
    doc.update(overrides)
    if "groups" in overrides:  # K's old name, as many tests spell it
        doc["branches"] = doc.pop("groups")
    return doc


@pytest.fixture()
def tiny_spec() -> Any:
    import dmtg_nas

    return dmtg_nas.load_spec(planted_doc())


@pytest.fixture()
def write_yaml(tmp_path: Path) -> Any:
    import yaml

    def _write(name: str, doc: Any) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
        return path

    return _write
