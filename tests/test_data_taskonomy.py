"""Taskonomy: the per-building layout, target decoding and masks, errors naming paths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dmtg_nas import DataError, SpecError, load_spec
from dmtg_nas.components import load_data
from dmtg_nas.data import make_loader
from dmtg_nas.data.taskonomy import TINY_SPLIT, read_split_csv

from .fixtures import write_taskonomy

TASKS = [
    {"name": "depth_zbuffer", "type": "depth"},
    {"name": "normal", "type": "normals"},
    {"name": "segment_semantic", "type": "segmentation", "num_classes": 18},
    {"name": "keypoints2d", "type": "keypoints"},
    {"name": "edge_texture", "type": "edges"},
]
SPLIT = {"train": ["b1"], "val": ["b2"], "test": ["b3"]}


def _spec(root: Path, tasks=TASKS, **dataset):
    return {
        "name": "taskonomy-test",
        "tasks": tasks,
        "dataset": {"name": "taskonomy", "root": str(root), "size": 16, "buildings": SPLIT, **dataset},
        "backbone": {"name": "convnet", "channels": [8, 8]},
        "groups": 2,
        "strategy": {"_base_": "dmtg", "epochs": 1, "batch_size": 4, "finetune": {"epochs": 0}},
    }


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return write_taskonomy(tmp_path / "taskonomy", {"b1": 4, "b2": 2, "b3": 2}, size=32)


def test_targets_decode_with_masks(root: Path) -> None:
    data = load_data(load_spec(_spec(root)))
    assert data.sizes() == {"train": 4, "val": 2, "test": 2}
    x, y = data.train[0]
    assert x.shape == (3, 16, 16)
    depth, normal, seg = y["depth_zbuffer"], y["normal"], y["segment_semantic"]
    assert depth.shape == (1, 16, 16) and normal.shape == (3, 16, 16) and seg.shape == (16, 16)
    assert y["keypoints2d"].shape == (1, 16, 16) and y["edge_texture"].shape == (1, 16, 16)
    # 65535 = missing depth (top rows) -> NaN; elsewhere metres (value / 512)
    assert torch.isnan(depth[0, 0]).all() and not torch.isnan(depth[0, 2:]).any()
    assert set(torch.unique(depth[0, 2:]).tolist()) <= {1000 / 512, 3000 / 512}
    # normals in [-1, 1], masked where depth is missing
    assert torch.isnan(normal[:, 0]).all()
    valid = normal[:, 2:]
    assert float(valid.min()) >= -1 and float(valid.max()) <= 1
    # labels: 1 and 3 are classes, the unlabelled 0 becomes the ignore index
    assert set(torch.unique(seg).tolist()) <= {1, 3, 255} and (seg[-1] == 255).all()
    assert float(y["keypoints2d"].min()) >= 0 and float(y["edge_texture"].max()) <= 1
    xb, yb = next(iter(make_loader(data.train, 2, shuffle=False, num_workers=2)))
    assert xb.shape == (2, 3, 16, 16) and yb["segment_semantic"].dtype == torch.int64


def test_normal_mask_from_depth_without_depth_task(root: Path) -> None:
    data = load_data(load_spec(_spec(root, tasks=[TASKS[1]])))
    _, y = data.train[0]
    assert set(y) == {"normal"} and torch.isnan(y["normal"][:, 0]).all()
    data = load_data(load_spec(_spec(root, tasks=[TASKS[1]], normal_mask="none")))
    assert not torch.isnan(data.train[0][1]["normal"]).any()


def test_segment_ignore_option(root: Path) -> None:
    data = load_data(load_spec(_spec(root, tasks=[TASKS[2]], segment_ignore=[255])))
    assert (data.train[0][1]["segment_semantic"][-1] == 0).all()


def test_samples_missing_a_file_are_skipped(root: Path) -> None:
    (root / "b1" / "edge_texture" / "point_0_view_0_domain_edge_texture.png").unlink()
    data = load_data(load_spec(_spec(root)))
    assert len(data.train) == 3  # type: ignore[arg-type]


def test_errors_name_the_path(root: Path) -> None:
    import shutil

    shutil.rmtree(root / "b2" / "normal")
    with pytest.raises(DataError, match=r"b2/normal: building 'b2' has no normal folder"):
        load_data(load_spec(_spec(root)))
    with pytest.raises(DataError, match=r"nowhere: building folder not found"):
        load_spec(_spec(root, buildings={"train": ["b1"], "val": ["b1"], "test": ["nowhere"]}))
    bad = root / "b1" / "depth_zbuffer" / "point_1_view_1_domain_depth_zbuffer.png"
    bad.write_bytes(b"\x89PNG broken")
    data = load_data(load_spec(_spec(root, tasks=[TASKS[0]])))
    with pytest.raises(DataError, match=r"point_1_view_1_domain_depth_zbuffer\.png: cannot read image"):
        data.train[1]
    with pytest.raises(SpecError, match="root folder not found") as info:
        load_spec(_spec(root / "missing"))
    assert info.value.key == "dataset.root"


@pytest.mark.parametrize(
    ("tasks", "key", "fragment"),
    [
        ([{"name": "depth_zbufer", "type": "depth"}], "tasks[0].name", "did you mean 'depth_zbuffer'"),
        ([{"name": "normal", "type": "depth"}], "tasks[0].type", "is a normals task, not depth"),
        ([{"name": "segment_semantic", "type": "segmentation"}], "tasks[0]", "needs 'num_classes'"),
        ([{"name": "normal", "type": "normals", "loss": "cosin"}], "tasks[0]", "did you mean 'cosine'"),
    ],
)
def test_task_errors(root: Path, tasks, key, fragment) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec(root, tasks=tasks))
    assert info.value.key == key and fragment in str(info.value)


def test_shipped_tiny_split_and_split_csv(tmp_path: Path) -> None:
    assert [len(TINY_SPLIT[s]) for s in ("train", "val", "test")] == [25, 5, 5]
    assert not set(TINY_SPLIT["train"]) & set(TINY_SPLIT["test"])
    csv = tmp_path / "split.csv"
    csv.write_text("id,train,val,test\nb1,1,0,0\nb2,0,1,0\nb3,0,0,1\n")
    assert read_split_csv(csv) == SPLIT
    root = write_taskonomy(tmp_path / "t", {"b1": 2, "b2": 1, "b3": 1}, size=16)
    doc = _spec(root, split=str(csv))
    del doc["dataset"]["buildings"]
    assert load_data(load_spec(doc)).sizes() == {"train": 2, "val": 1, "test": 1}
    assert not math.isnan(0.0)
