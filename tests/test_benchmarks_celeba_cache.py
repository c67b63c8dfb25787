"""benchmarks/celeba_cache.py: the cache's cost at full scale, extrapolated from a measured part."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import celeba_cache


def test_the_full_scale_estimate_follows_from_the_measured_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    celeba_cache.main(["--images", "24", "--size", "16", "--out", str(tmp_path / "cache.json")])
    result = json.loads((tmp_path / "cache.json").read_text())
    assert result["images"] == 24 and result["size"] == 16
    assert result["bytes_per_image"] == pytest.approx(3 * 16 * 16, abs=8)  # uint8 (3, 16, 16), the .npy header shared
    assert result["full_scale_seconds"] == pytest.approx(result["build_seconds"] / 24 * 202_599, rel=0.01)
    assert result["full_scale_gb"] == pytest.approx(result["bytes_per_image"] * 202_599 / 1e9, abs=0.01)
    assert result["jpeg_kb"] > 1
    assert capsys.readouterr().out.startswith("images=24 size=16")
