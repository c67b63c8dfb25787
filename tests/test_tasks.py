"""Task losses (masked, ignore index, overrides), metrics against hand computations, references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dmtg_nas import DataError
from dmtg_nas.config import TaskConfig
from dmtg_nas.metrics import compare_to_reference, load_reference
from dmtg_nas.tasks import TaskMetrics, task_loss


def _task(kind: str, **kw) -> TaskConfig:
    return TaskConfig(name=kind, type=kind, **kw)


def test_masked_depth_loss_skips_nan_pixels() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[[2.0, float("nan")], [3.0, float("nan")]]]])
    assert float(task_loss(_task("depth"), pred, target)) == pytest.approx(0.5)  # |1-2|, |3-3|
    assert float(task_loss(_task("depth", loss="mse"), pred, target)) == pytest.approx(0.5)
    empty = torch.full_like(target, float("nan"))
    loss = task_loss(_task("depth"), pred.requires_grad_(), empty)
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_segmentation_ignores_the_ignore_index() -> None:
    torch.manual_seed(0)
    pred = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    target[0, 0] = 255
    keep = target != 255
    expected = F.cross_entropy(pred.permute(0, 2, 3, 1)[keep], target[keep])
    assert float(task_loss(_task("segmentation", num_classes=4), pred, target)) == pytest.approx(float(expected))


def test_normals_losses() -> None:
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, 2] = 1.0  # both pixels predict (0, 0, 1)
    target = torch.zeros(1, 3, 1, 2)
    target[0, 0, 0, 0] = 1.0  # pixel 0: (1, 0, 0), 90 degrees off
    target[0, :, 0, 1] = float("nan")  # pixel 1: masked
    assert float(task_loss(_task("normals"), pred, target)) == pytest.approx(2 / 3)
    assert float(task_loss(_task("normals", loss="cosine"), pred, target)) == pytest.approx(1.0)


def test_dense_metrics_match_hand_computations() -> None:
    tasks = [
        _task("depth"),
        _task("normals"),
        _task("segmentation", num_classes=3),
        _task("edges", threshold=0.5),
    ]
    metrics = TaskMetrics(tasks)
    depth_p = torch.tensor([[[[1.0, 2.0], [4.0, 9.0]]]])
    depth_t = torch.tensor([[[[2.0, 2.0], [2.0, float("nan")]]]])
    angles = torch.tensor([0.0, 10.0, 20.0, 40.0])  # degrees, one per pixel
    rad = torch.deg2rad(angles)
    normal_p = torch.stack([torch.sin(rad), torch.zeros(4), torch.cos(rad)]).reshape(1, 3, 2, 2)
    normal_t = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    seg_t = torch.tensor([[[0, 1], [2, 255]]])
    seg_p = F.one_hot(torch.tensor([[[0, 1], [1, 0]]]), 3).permute(0, 3, 1, 2).float()
    edge_p = torch.tensor([[[[0.9, 0.2], [0.8, 0.1]]]])
    edge_t = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])
    metrics.update(
        {"depth": depth_p, "normals": normal_p, "segmentation": seg_p, "edges": edge_p},
        {"depth": depth_t, "normals": normal_t, "segmentation": seg_t, "edges": edge_t},
    )
    out = metrics.compute()
    d = out["depth"]
    assert d["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert d["abs_rel"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert d["mae"] == pytest.approx(1.0)
    n = out["normals"]
    assert n["angle_mean"] == pytest.approx(17.5, abs=1e-3)
    assert n["angle_median"] == pytest.approx(10.0, abs=0.1)  # lower median of 0, 10, 20, 40
    assert (n["within_11.25"], n["within_22.5"], n["within_30"]) == pytest.approx((50.0, 75.0, 75.0))
    s = out["segmentation"]
    assert s["pixel_accuracy"] == pytest.approx(2 / 3)
    assert s["miou"] == pytest.approx((1 + 0.5 + 0) / 3)  # IoU per class: 1, 1/2, 0
    e = out["edges"]
    assert e["f1"] == pytest.approx(0.8)  # tp 2, fp 0, fn 1
    assert e["mae"] == pytest.approx((0.1 + 0.8 + 0.2 + 0.1) / 4)


def test_reference_comparison(tmp_path: Path) -> None:
    tasks = [_task("binary"), _task("segmentation", num_classes=3)]
    ref_a = tmp_path / "stl_a.json"
    ref_a.write_text(json.dumps({"test": {"binary": {"error": 10.0, "accuracy": 0.9}}}))
    ref_b = tmp_path / "stl_b.json"
    ref_b.write_text(json.dumps({"segmentation": {"miou": 0.5, "pixel_accuracy": 0.8}}))
    reference = load_reference([ref_a, ref_b])
    results = {
        "test": {
            "binary": {"error": 8.0, "accuracy": 0.92},
            "segmentation": {"miou": 0.55, "pixel_accuracy": 0.76},
        }
    }
    out = compare_to_reference(results, reference, tasks)["test"]
    assert out["tasks"]["binary"]["normalized_gain"] == pytest.approx(20.0)  # (10 - 8) / 10
    assert out["tasks"]["segmentation"]["normalized_gain"] == pytest.approx(10.0)  # higher is better
    assert out["normalized_gain"] == pytest.approx(15.0)
    # Delta_m: binary 20 %; segmentation mean(+10 %, -5 %) = 2.5 %
    assert out["delta_m"] == pytest.approx((20.0 + 2.5) / 2)
    assert out["not_compared"] == []
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(DataError, match=r"bad\.json: the reference file is not valid JSON"):
        load_reference(tmp_path / "bad.json")
