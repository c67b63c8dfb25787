"""Longer end-to-end runs: the shipped planted search and the examples (marked slow; CI runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dmtg_nas

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_planted_search_beats_all_in_one() -> None:
    spec = dmtg_nas.load_spec("planted")
    found = dmtg_nas.search(spec, None, progress=False)
    single = dmtg_nas.search(dmtg_nas.load_spec("planted", ["groups=1"]), None, progress=False)
    found_loss = found.metrics["totals"]["test"]["total_loss"]
    single_loss = single.metrics["totals"]["test"]["total_loss"]
    assert len(found.groups) > 1
    assert found_loss < 0.95 * single_loss, (found.groups, found_loss, single_loss)


def test_digits_search_beats_or_ties_all_in_one() -> None:
    """The README's main command: real images, the shipped defaults. The searched grouping's test
    total error must beat the all-in-one network (K=1) or tie it within noise (1.5 points of summed
    error, about three test images per task)."""
    found = dmtg_nas.search(dmtg_nas.load_spec("digits"), None, progress=False)
    single = dmtg_nas.search(dmtg_nas.load_spec("digits", ["groups=1"]), None, progress=False)
    found_error = found.metrics["totals"]["test"]["total_error"]
    single_error = single.metrics["totals"]["test"]["total_error"]
    assert found_error <= single_error + 1.5, (found.groups, found_error, single_error)


def test_suite_short_mode_recovers_planted_pairs(tmp_path: Path) -> None:
    """The planted suite in its CI mode: one seed of three pairs with K = 3 and with K = 4, the
    default strategy, scored against the exhaustive optimum. Planted pairs are found exactly, and the
    spare fourth branch does not cut a pair apart."""
    from dmtg_nas.suite import run_suite

    records = run_suite("dmtg", ["pairs-k3", "pairs-k4"], [0], tmp_path)
    assert [r["shape"] for r in records] == ["pairs-k3", "pairs-k4"]
    for r in records:
        assert r["reference"] == "exhaustive"
        assert r["exact"] and not r["merged"], r
        assert r["gap_percent"] <= 2.0, r
    assert "pairs-k4" in (tmp_path / "suite.md").read_text()
    assert len(json.loads((tmp_path / "references.json").read_text())) == 2


def test_suite_merge_check_merges_where_the_optimum_is_coarser(tmp_path: Path) -> None:
    """Binary targets, three planted pairs, K = 3: the exhaustive optimum puts all six tasks in one
    network. The one-shot search returns the pairs (its affinity sees the feature structure); the
    default strategy's merge check must reach the optimum's loss, and the one-shot preset must not."""
    from dmtg_nas.suite import run_suite

    (default,) = run_suite("dmtg", ["binary-k3"], [0], tmp_path)
    oneshot = run_suite("dmtg-oneshot", ["binary-k3"], [0], tmp_path, resume=True)[-1]  # reuses the reference
    assert default["reference"] == oneshot["reference"] == "exhaustive"
    assert not oneshot["planted_is_optimum"]  # the data's optimum is coarser than the planted pairs
    assert default["gap_percent"] <= 2.0 and default["merged"], default
    assert oneshot["gap_percent"] > 5.0, oneshot


@pytest.mark.parametrize(
    "script",
    [
        ["examples/api_table.py"],
        ["examples/nni_experiment.py", "--epochs", "2", "--workdir", "{tmp}/nni"],
        ["examples/user_dataset.py"],
    ],
)
def test_examples_run(script: list[str], tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in script]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / args[0]), *args[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test total loss" in proc.stdout
