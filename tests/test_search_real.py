"""Short searches end to end on generated CelebA and Taskonomy folders, and on digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dmtg_nas
from dmtg_nas.cli import main
from dmtg_nas.warmstart import AUTO_SKIPPED

from .fixtures import TASKONOMY_DOMAINS, celeba_doc, write_celeba, write_taskonomy


def _check_outputs(out: Path, tasks: list[str]) -> dict:
    grouping = json.loads((out / "grouping.json").read_text())
    assert sorted(t for g in grouping["groups"] for t in g) == sorted(tasks)
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(metrics[split]) == set(tasks)
    return metrics


def test_celeba_search_end_to_end(tmp_path: Path) -> None:
    root = write_celeba(tmp_path / "celeba", n=60)
    tasks = ["Black_Hair", "Smiling", "Male"]
    stl = tmp_path / "stl.json"
    stl.write_text(json.dumps({"test": {t: {"error": 40.0, "accuracy": 0.6} for t in tasks}}))
    strategy = {"_base_": "paper-celeba", "epochs": 2, "batch_size": 16, "num_workers": 1}
    spec = dmtg_nas.load_spec(celeba_doc(root, tasks, name="celeba-fixture", reference=str(stl), strategy=strategy))
    out = tmp_path / "run"
    dmtg_nas.search(spec, out, progress=False)
    metrics = _check_outputs(out, tasks)
    totals = metrics["totals"]["test"]
    assert totals["total_error"] == pytest.approx(sum(metrics["test"][t]["error"] for t in tasks))
    assert all(0 <= metrics["test"][t]["error"] <= 100 for t in tasks)
    ref = metrics["reference"]["test"]
    expected = sum((40.0 - metrics["test"][t]["error"]) / 40.0 for t in tasks) / 3 * 100
    assert ref["normalized_gain"] == pytest.approx(expected) and ref["delta_m"] == pytest.approx(expected)


def test_taskonomy_search_end_to_end(tmp_path: Path) -> None:
    root = write_taskonomy(tmp_path / "taskonomy", {"b1": 6, "b2": 3, "b3": 3}, size=32)
    tasks = list(TASKONOMY_DOMAINS)
    doc = {
        "name": "taskonomy-fixture",
        "tasks": [
            {"name": "depth_zbuffer", "type": "depth"},
            {"name": "normal", "type": "normals", "loss": "cosine"},
            {"name": "segment_semantic", "type": "segmentation", "num_classes": 18},
            {"name": "keypoints2d", "type": "keypoints", "weight": 2.0},
            {"name": "edge_texture", "type": "edges"},
        ],
        "dataset": {
            "name": "taskonomy",
            "root": str(root),
            "size": 32,
            "buildings": {"train": ["b1"], "val": ["b2"], "test": ["b3"]},
        },
        "backbone": {"name": "timm:test_resnet", "shared_stem": 1},
        "heads": {"decoder_width": 16},
        "groups": 2,
        "strategy": {"_base_": "paper-taskonomy", "epochs": 2, "batch_size": 3, "num_workers": 0},
    }
    spec_file = tmp_path / "taskonomy.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    assert main(["search", str(spec_file), "--out", str(out), "--quiet"]) == 0
    metrics = _check_outputs(out, tasks)
    test = metrics["test"]
    assert {"rmse", "abs_rel"} <= set(test["depth_zbuffer"])
    assert {"angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30"} <= set(test["normal"])
    assert 0 <= test["segment_semantic"]["miou"] <= 1
    assert {"mae", "f1"} <= set(test["keypoints2d"]) and {"mae", "f1"} <= set(test["edge_texture"])
    model = dmtg_nas.load_model(out / "model.pt")
    assert model.stem is not None


def test_backbone_swap_is_one_line_across_timm_families(tmp_path: Path) -> None:
    """The same search over four timm families: only ``backbone.name`` changes."""
    for name in ("timm:test_resnet", "timm:test_efficientnet", "timm:test_convnext", "timm:test_vit"):
        spec = dmtg_nas.load_spec(
            "digits",
            [
                f"backbone={{name: {name}}}",
                "dataset.size=32",
                "dataset.channels=3",
                "dataset.samples=300",
                "groups=2",
                "strategy.epochs=1",
                "strategy.finetune.epochs=0",
                "strategy.batch_size=64",
                "strategy.warmup.method=attribution",  # forced on (auto: off on batch-norm image encoders)
                "strategy.warmup.epochs=1",  # the warm start runs (input gradients through timm), briefly
                "strategy.warmup.min_steps=0",
            ],
        )
        result = dmtg_nas.search(spec, None, progress=False)
        assert sorted(t for g in result.groups for t in g) == sorted(spec.task_names), name
        assert len(result.metrics["warmup"]["affinity"]) == len(spec.tasks), name
        assert result.metrics["totals"]["test"]["total_error"] < 9 * 100, name


def test_shipped_real_data_presets_validate_against_local_copies(tmp_path: Path) -> None:
    from dmtg_nas.data.taskonomy import TINY_SPLIT

    celeba = write_celeba(tmp_path / "celeba", n=12)
    for name, k in (("celeba9", 9), ("celeba40", 40)):
        spec = dmtg_nas.load_spec(name, [f"dataset.root={celeba}"])
        assert len(spec.tasks) == k and spec.backbone.name == "celeba_resnet"
        # the default strategy at CelebA's scale; the paper's recipe one override away
        s = spec.strategy
        assert (s.name, s.warmup.method, s.warmup.epochs, s.epochs, s.finetune.epochs) == (
            "dmtg",
            "auto",  # no warm start on these batch-norm image encoders; warmup.method=attribution: 2 epochs
            2,
            10,
            5,
        )
        assert s.num_workers == 8
        paper = dmtg_nas.load_spec(name, [f"dataset.root={celeba}", "strategy=paper-celeba"]).strategy
        assert paper.name == "paper-celeba" and paper.optimizer.lr == pytest.approx(8e-4) and paper.epochs == 100
    # the tiny split's 35 buildings, one sample each, in the release's names
    root = write_taskonomy(tmp_path / "taskonomy", {b: 1 for split in TINY_SPLIT.values() for b in split}, size=8)
    spec = dmtg_nas.load_spec("taskonomy5", [f"dataset.root={root}"])
    s = spec.strategy
    assert (s.name, s.batch_size, s.epochs, s.warmup.epochs, s.warmup.batch_size) == ("dmtg", 32, 10, 1, 16)
    assert spec.groups == 3 and spec.dataset.model_extra is not None
    assert spec.dataset.model_extra["flip"] is True and spec.dataset.model_extra["normalize"] == "reference"
    paper = dmtg_nas.load_spec("taskonomy5", [f"dataset.root={root}", "strategy=paper-taskonomy"]).strategy
    assert (paper.name, paper.temperature.init, paper.lr_schedule.name, paper.batch_size) == (
        "paper-taskonomy",
        4.0,
        "plateau",
        48,
    )
    with pytest.raises(dmtg_nas.SpecError, match=r"dataset\.root: missing required key"):
        dmtg_nas.load_spec("celeba9")
    assert dmtg_nas.load_strategy("annealed").temperature.schedule == "exponential"


def _tiny_taskonomy5(root: Path) -> list[str]:
    """Overrides that shrink the shipped taskonomy5 space to a CPU-sized run on a small fixture
    (its data options, tasks and strategy otherwise as shipped)."""
    sets = [
        f"dataset.root={root}",
        "dataset.buildings={train: [b1], val: [b2], test: [b3]}",
        "dataset.size=32",
        "backbone={name: timm:test_resnet}",
        "heads.decoder_width=8",
        "strategy.epochs=2",
        "strategy.batch_size=4",
        "strategy.warmup.epochs=1",
        "strategy.warmup.batch_size=4",
        "strategy.warmup.samples=8",
        "strategy.warmup.min_steps=0",  # the preset's 250-step minimum is for real data
        "strategy.finetune.epochs=1",
        "strategy.num_workers=0",
    ]
    return [item for pair in (("--set", v) for v in sets) for item in pair]


def test_taskonomy5_validates_and_searches_a_release_named_copy(tmp_path: Path, capsys) -> None:
    """``dmtg validate`` and ``dmtg search taskonomy5`` on a copy in the release's file names
    (``..._domain_segmentsemantic.png``): validation in the per-building and the domain layout, the
    search in omnitools.download's layout."""
    for layout in ("building", "domain"):
        root = write_taskonomy(tmp_path / layout, {"b1": 2, "b2": 1, "b3": 1}, size=16, layout=layout)
        assert main(["validate", "taskonomy5", *_tiny_taskonomy5(root)]) == 0
        assert "ok: taskonomy5: 5 tasks, K=3, dataset taskonomy" in capsys.readouterr().out
    root = write_taskonomy(tmp_path / "omnidata", {"b1": 8, "b2": 3, "b3": 3}, size=32, layout="omnidata")
    assert (root / "segment_semantic" / "taskonomy" / "b1" / "point_0_view_0_domain_segmentsemantic.png").is_file()
    out = tmp_path / "run"
    assert main(["search", "taskonomy5", *_tiny_taskonomy5(root), "--out", str(out), "--quiet"]) == 0
    tasks = list(TASKONOMY_DOMAINS)
    metrics = _check_outputs(out, tasks)
    assert metrics["search"]["data_sizes"] == {"train": 8, "val": 3, "test": 3}
    assert metrics["warmup"] == {"method": "none", "skipped": AUTO_SKIPPED}  # the shipped strategy on dense images
    forced = tmp_path / "forced"
    sets = [*_tiny_taskonomy5(root), "--set", "strategy.warmup.method=attribution"]
    assert main(["search", "taskonomy5", *sets, "--out", str(forced), "--quiet"]) == 0
    metrics = _check_outputs(forced, tasks)  # dense outputs' input gradients, averaged over positions
    assert metrics["warmup"]["method"] == "attribution" and len(metrics["warmup"]["affinity"]) == 5
    test = metrics["test"]
    assert 0 <= test["segment_semantic"]["miou"] <= 1
    # keypoints and edges in the reference's units: losses of the size of the others', not ~1e-3
    assert test["edge_texture"]["loss"] > 0.05 and test["keypoints2d"]["loss"] > 0.05
