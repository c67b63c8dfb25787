"""Taskonomy: the release's file names in its three layouts, target decoding (the reference code's
normalisations, and the old scaling), masks, flips, errors naming paths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dmtg_nas import DataError, SpecError, load_spec
from dmtg_nas.components import load_data
from dmtg_nas.data import make_loader
from dmtg_nas.data.taskonomy import TINY_SPLIT, read_split_csv

from .fixtures import EDGE_VALUE, KEYPOINT_PEAK, TASKONOMY_TASKS, taskonomy_doc, write_taskonomy

TASKS = TASKONOMY_TASKS
SPLIT = {"train": ["b1"], "val": ["b2"], "test": ["b3"]}


def _spec(root: Path, tasks=TASKS, **dataset):
    return taskonomy_doc(root, tasks, dataset=dataset)


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
    # 65535 = missing depth (top rows) -> NaN; 9000 (row 2 of 32, row 1 at 16) is beyond the reference's
    # 8192 limit -> NaN; elsewhere metres (value / 512)
    assert torch.isnan(depth[0, :2]).all() and not torch.isnan(depth[0, 2:]).any()
    assert set(torch.unique(depth[0, 2:]).tolist()) <= {1000 / 512, 3000 / 512}
    # normals in [-1, 1], masked where depth is missing
    assert torch.isnan(normal[:, :2]).all()
    valid = normal[:, 2:]
    assert float(valid.min()) >= -1 and float(valid.max()) <= 1
    # labels: 1 and 3 are classes, the unlabelled 0 becomes the ignore index
    assert set(torch.unique(seg).tolist()) <= {1, 3, 255} and (seg[-1] == 255).all()
    # keypoints and edges standardised with the reference code's statistics: background 0 ->
    # (0 - 50) / 100 and (0 - 718) / 1070
    assert float(y["keypoints2d"].min()) == pytest.approx(-0.5)
    assert float(y["edge_texture"].min()) == pytest.approx(-718 / 1070)
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
    (root / "b1" / "segment_semantic" / "point_1_view_1_domain_segmentsemantic.png").unlink()
    data = load_data(load_spec(_spec(root)))
    assert len(data.train) == 2  # type: ignore[arg-type]
    assert data.train.prefixes.tolist() == [b"point_2_view_2", b"point_3_view_0"]  # type: ignore[attr-defined]


def test_errors_name_the_path(root: Path) -> None:
    import shutil

    shutil.rmtree(root / "b2" / "normal")
    with pytest.raises(DataError, match=r"b2/normal: building 'b2' has no normal folder \(building layout\)"):
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


# ------------------------------------------------------------------------------------------------
# the release's names and layouts
# ------------------------------------------------------------------------------------------------


def test_fixture_has_the_release_file_names(root: Path) -> None:
    """The names of the release's sample building (github.com/alexsax/taskonomy-sample-model-1)."""
    assert (root / "b1" / "rgb" / "point_0_view_0_domain_rgb.png").is_file()
    assert (root / "b1" / "segment_semantic" / "point_0_view_0_domain_segmentsemantic.png").is_file()
    assert (root / "b1" / "depth_zbuffer" / "point_0_view_0_domain_depth_zbuffer.png").is_file()
    assert (root / "b1" / "keypoints2d" / "point_0_view_0_domain_keypoints2d.png").is_file()
    assert not list(root.rglob("*_domain_segment_semantic.png"))


@pytest.mark.parametrize(("layout", "names"), [("building", "legacy"), ("domain", "release"), ("omnidata", "release")])
def test_every_layout_and_both_segmentation_names_are_read(tmp_path: Path, layout: str, names: str) -> None:
    root = write_taskonomy(tmp_path / "t", {"b1": 3, "b2": 2, "b3": 1}, size=16, layout=layout, names=names)
    if layout == "omnidata":
        assert (root / "segment_semantic" / "taskonomy" / "b1" / "point_0_view_0_domain_segmentsemantic.png").is_file()
    data = load_data(load_spec(_spec(root)))
    assert data.sizes() == {"train": 3, "val": 2, "test": 1}
    assert data.info["layout"] == layout
    seg = data.train[0][1]["segment_semantic"]
    assert set(torch.unique(seg).tolist()) <= {1, 3, 255} and (seg == 3).any()
    # the layout named explicitly reads the same; a wrong one names the folder it looked for
    assert load_data(load_spec(_spec(root, layout=layout))).sizes() == data.sizes()
    other = "building" if layout != "building" else "domain"
    message = r"t/b1: building folder not found" if other == "building" else r"t/rgb/b1: .* \(domain layout\)"
    with pytest.raises(DataError, match=message):
        load_spec(_spec(root, layout=other))


def test_validation_refuses_a_folder_without_a_file_of_the_domains_names(root: Path) -> None:
    """A copy whose segmentation files have neither name fails ``dmtg validate``, instead of every
    sample being skipped at training time."""
    folder = root / "b2" / "segment_semantic"
    for f in folder.iterdir():
        f.rename(f.with_name(f.name.replace("segmentsemantic", "semantic")))
    with pytest.raises(
        DataError,
        match=r"b2/segment_semantic: no file named point_<i>_view_<j>_domain_segmentsemantic\.png or "
        r"point_<i>_view_<j>_domain_segment_semantic\.png",
    ):
        load_spec(_spec(root))


def test_a_folder_mixing_both_names_is_an_error(root: Path) -> None:
    folder = root / "b1" / "segment_semantic"
    first = folder / "point_0_view_0_domain_segmentsemantic.png"
    first.rename(folder / "point_0_view_0_domain_segment_semantic.png")
    with pytest.raises(DataError, match=r"b1/segment_semantic: mixes file names"):
        load_data(load_spec(_spec(root)))


# ------------------------------------------------------------------------------------------------
# normalisations
# ------------------------------------------------------------------------------------------------


def _first(root: Path, **dataset) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    data = load_data(load_spec(_spec(root, size=32, **dataset)))  # the fixture's own size: no resampling
    return data.train[0]  # type: ignore[no-any-return]


def test_keypoints_and_edges_follow_the_reference_or_the_old_scaling(root: Path) -> None:
    _, ref = _first(root)
    _, unit = _first(root, normalize="unit")
    kp, kp_unit = ref["keypoints2d"][0], unit["keypoints2d"][0]
    peak = kp_unit == kp_unit.max()
    assert int(peak.sum()) == 1
    assert float(kp[peak]) == pytest.approx((KEYPOINT_PEAK - 50) / 100)  # (x - 50) / 100
    assert float(kp_unit[peak]) == pytest.approx(KEYPOINT_PEAK / 65535)
    assert float(kp[~peak].max()) == pytest.approx(-0.5) and float(kp_unit[~peak].max()) == 0.0
    edge, edge_unit = ref["edge_texture"][0], unit["edge_texture"][0]
    assert sorted(torch.unique(edge).tolist()) == pytest.approx([-718 / 1070, (EDGE_VALUE - 718) / 1070])
    assert sorted(torch.unique(edge_unit).tolist()) == pytest.approx([0.0, EDGE_VALUE / 65535])
    # the L1 of a constant prediction: the old scaling made it tiny next to depth's (metres)
    assert float(edge.abs().mean()) > 100 * float(edge_unit.abs().mean())
    # own statistics for a domain
    _, own = _first(root, target_stats={"keypoints2d": [0.0, 450.0]})
    assert float(own["keypoints2d"][0][peak]) == pytest.approx(1.0)


def test_depth_limit_follows_the_reference_or_only_the_missing_value(root: Path) -> None:
    _, ref = _first(root)
    _, old = _first(root, depth_limit=None)
    # rows 0-1: 65535 (missing either way); row 2: 9000 (>= 8192: missing for the reference only)
    assert torch.isnan(ref["depth_zbuffer"][0, :3]).all() and not torch.isnan(ref["depth_zbuffer"][0, 3:]).any()
    assert torch.isnan(old["depth_zbuffer"][0, :2]).all()
    assert torch.allclose(old["depth_zbuffer"][0, 2], torch.full((32,), 9000 / 512))
    # the normals' mask follows the same rule
    assert torch.isnan(ref["normal"][:, 2]).all() and not torch.isnan(old["normal"][:, 2]).any()
    _, lower = _first(root, depth_limit=2000)  # the far background (3000) is cut too
    assert set(torch.unique(lower["depth_zbuffer"][~torch.isnan(lower["depth_zbuffer"])]).tolist()) == {1000 / 512}


def test_inputs_imagenet_or_unit(root: Path) -> None:
    x_imagenet, _ = _first(root)
    x_unit, _ = _first(root, inputs="unit")
    assert float(x_unit.min()) >= 0 and float(x_unit.max()) <= 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(x_imagenet, (x_unit - mean) / std, atol=1e-6)


@pytest.mark.parametrize(
    ("dataset", "key", "fragment"),
    [
        ({"normalize": "standard"}, "dataset.normalize", "'reference' or 'unit'"),
        ({"target_stats": {"keypoints2d": [50, 0]}}, "dataset.target_stats", "must be > 0"),
        ({"target_stats": {"keypoints2d": [50]}}, "dataset.target_stats.keypoints2d", "at least 2"),
        ({"target_stats": {"normal": [0, 1]}}, "dataset.target_stats.normal", "keypoints and edges"),
        ({"layout": "flat"}, "dataset.layout", "'omnidata'"),
        ({"depth_limit": 0}, "dataset.depth_limit", "greater than or equal to 1"),
    ],
)
def test_option_errors(root: Path, dataset, key, fragment) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(_spec(root, **dataset))
    assert info.value.key == key and fragment in str(info.value)


def test_a_domain_without_reference_statistics_needs_its_own(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for b in ("b1", "b2", "b3"):
        for d in ("rgb", "keypoints3d"):
            (root / b / d).mkdir(parents=True)
    tasks = [{"name": "keypoints3d", "type": "keypoints"}]
    with pytest.raises(SpecError, match=r"no statistics for 'keypoints3d'") as info:
        load_spec(_spec(root, tasks=tasks))
    assert info.value.key == "dataset.normalize"


# ------------------------------------------------------------------------------------------------
# flips
# ------------------------------------------------------------------------------------------------


def test_flip_mirrors_training_samples_and_their_normals(root: Path) -> None:
    plain = load_data(load_spec(_spec(root)))
    flipped = load_data(load_spec(_spec(root, flip=True)))
    x0, y0 = plain.train[0]
    torch.manual_seed(0)
    seen = {"same": 0, "mirrored": 0}
    for _ in range(40):
        x, y = flipped.train[0]
        if torch.equal(x, x0):
            seen["same"] += 1
            assert all(torch.equal(y[k].nan_to_num(-9), y0[k].nan_to_num(-9)) for k in y)
            continue
        assert torch.equal(x, x0.flip(-1))
        seen["mirrored"] += 1
        for name in ("depth_zbuffer", "segment_semantic", "keypoints2d", "edge_texture"):
            assert torch.equal(y[name].nan_to_num(-9), y0[name].flip(-1).nan_to_num(-9)), name
        # the normals' x component changes sign (the square's background faces right: x = +1)
        expected = y0["normal"].flip(-1) * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        assert torch.equal(y["normal"].nan_to_num(-9), expected.nan_to_num(-9))
    assert seen["same"] > 5 and seen["mirrored"] > 5
    # validation and test samples are never flipped
    assert all(torch.equal(flipped.val[0][0], plain.val[0][0]) for _ in range(10))


def test_split_csv_with_carriage_returns_as_omnidata_ships_it(tmp_path: Path) -> None:
    """omnidata's train_val_test_tiny.csv ends its lines with a bare carriage return."""
    csv = tmp_path / "train_val_test_tiny.csv"
    rows = ["id,train,val,test"] + [
        f"{b},{int(s == 'train')},{int(s == 'val')},{int(s == 'test')}" for s in TINY_SPLIT for b in TINY_SPLIT[s]
    ]
    csv.write_bytes("\r".join(rows).encode())
    assert read_split_csv(csv) == {s: list(TINY_SPLIT[s]) for s in TINY_SPLIT}
