"""Encoders: the registry, TAG's CelebA ResNet, feature maps for dense heads, shared stems, timm."""

from __future__ import annotations

import pytest
import torch

from dmtg_nas import SpecError, load_spec
from dmtg_nas.backbones import DenseHead, build_encoder, build_head, scale_backbone
from dmtg_nas.config import BackboneConfig, HeadsConfig, TaskConfig
from dmtg_nas.nni.space import GroupingSpace

from .conftest import planted_doc


def _bb(name: str, **kw) -> BackboneConfig:
    return BackboneConfig.model_validate({"name": name, **kw})


def test_celeba_resnet_is_tags_tiny_resnet() -> None:
    built = build_encoder(_bb("celeba_resnet"), (3, 64, 64))
    assert built.stem is None and built.features.kind == "vector"
    assert built.features.width == 14_400  # 64 channels x 15 x 15, as in TAG and DMTG
    convs = [m for m in built.branch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(c.out_channels == 64 for c in convs)


@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_efficientnet", "timm:test_convnext", "convnet"])
def test_shared_stem_splits_after_k_stages(name: str) -> None:
    shape = (3, 32, 32)
    whole = build_encoder(_bb(name), shape, maps=True)
    split = build_encoder(_bb(name, shared_stem=2), shape, maps=True)
    assert split.stem is not None and whole.stem is None
    assert split.features.channels == whole.features.channels
    x = torch.randn(2, *shape)
    split.branch.eval(), split.stem.eval()
    maps = split.branch(split.stem(x))
    assert [tuple(m.shape[1:2]) for m in maps] == [(c,) for c in split.features.channels]
    n_stem = sum(p.numel() for p in split.stem.parameters())
    assert n_stem > 0


def test_space_with_shared_stem_has_one_stem_and_k_branches() -> None:
    spec = load_spec(planted_doc(backbone={"name": "mlp", "hidden": [8, 6, 3], "shared_stem": 1}))
    space = GroupingSpace.from_spec(spec, (8,))
    assert isinstance(space.stem, torch.nn.Module) and len(space.branches) == 2
    out = space(torch.randn(5, 8))
    assert set(out) == {"t0", "t1", "t2", "t3"}
    net = space.freeze({"t0": 0, "t1": 1, "t2": 1, "t3": 0})
    assert net.stem is not None
    assert torch.allclose(
        net(torch.ones(2, 8))["t1"], space.routers.head(1, 1)(space.branches[1](space.stem(torch.ones(2, 8))))
    )


def test_scale_backbone_multiplies_every_width_and_keeps_the_rest() -> None:
    mlp = scale_backbone(_bb("mlp", hidden=[8, 3], activation="gelu", shared_stem=1), 0.5)
    assert mlp.model_extra == {"hidden": [4, 2], "activation": "gelu"} and mlp.shared_stem == 1
    assert scale_backbone(_bb("mlp", hidden=[8, 3]), 0.1).model_extra == {"hidden": [1, 1]}  # never below 1
    conv = scale_backbone(_bb("convnet", channels=[16, 32, 32], dropout=0.1), 0.5)
    assert conv.model_extra == {"channels": [8, 16, 16], "dropout": 0.1}
    assert scale_backbone(_bb("celeba_resnet"), 0.25).model_extra == {"width": 16}  # the default 64
    # the built encoder has the scaled widths
    built = build_encoder(conv, (1, 16, 16))
    assert built.features.width == 16
    widths = [m.out_channels for m in built.branch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [8, 16, 16]
    # timm models keep their architecture; factor 1 changes nothing
    timm_config = _bb("timm:test_resnet")
    assert scale_backbone(timm_config, 0.5) is timm_config
    full = _bb("convnet", channels=[16])
    assert scale_backbone(full, 1.0) is full


@pytest.mark.parametrize(
    ("backbone", "fragment"),
    [
        ({"name": "mlp", "hidden": [8, 3], "shared_stem": 2}, "leaves no stage to branch: mlp has 2 stages"),
        ({"name": "timm:test_resnet", "shared_stem": 5}, "test_resnet has 5 stages (allowed: 0 to 4)"),
        ({"name": "convnt"}, "did you mean 'convnet'"),
        ({"name": "convnet", "chanels": [4]}, "did you mean 'channels'"),
    ],
)
def test_backbone_spec_errors(backbone, fragment) -> None:
    """Spec errors of the encoder; a timm model's stages are counted when the components are
    resolved (the spec layer has no timm)."""
    from dmtg_nas.components import validate_components

    with pytest.raises(SpecError) as info:
        validate_components(load_spec(planted_doc(backbone=backbone)))
    assert fragment in str(info.value) and info.value.key.startswith("backbone")


def test_vit_supports_dense_maps_but_not_a_shared_stem() -> None:
    built = build_encoder(_bb("timm:test_vit"), (3, 32, 32), maps=True)
    assert built.features.kind == "maps"
    with pytest.raises(SpecError, match="not a chain of stages"):
        build_encoder(_bb("timm:test_vit", shared_stem=1), (3, 32, 32), maps=True)


def test_dense_head_upsamples_to_the_input_size() -> None:
    head = DenseHead([8, 16, 32], out_channels=3, out_size=(20, 24), width=8, n=2)
    maps = [torch.randn(2, 8, 10, 12), torch.randn(2, 16, 5, 6), torch.randn(2, 32, 3, 3)]
    assert head(maps).shape == (2, 3, 20, 24)
    built = build_encoder(_bb("convnet", channels=[4, 8]), (3, 16, 16), maps=True)
    seg = TaskConfig(name="s", type="segmentation", num_classes=5)
    cls = TaskConfig(name="c", type="multiclass", num_classes=4)
    feats = built.branch(torch.randn(2, 3, 16, 16))
    assert build_head(seg, built.features, HeadsConfig(), (16, 16))(feats).shape == (2, 5, 16, 16)
    assert build_head(cls, built.features, HeadsConfig(), (16, 16))(feats).shape == (2, 4)


def test_dense_tasks_refuse_vector_encoders(tmp_path) -> None:
    from .fixtures import write_taskonomy

    root = write_taskonomy(tmp_path / "t", {"b": 1}, size=16)
    doc = planted_doc(
        tasks=[{"name": "depth_zbuffer", "type": "depth"}],
        dataset={"name": "taskonomy", "root": str(root), "buildings": {"train": ["b"], "val": ["b"], "test": ["b"]}},
        backbone={"name": "mlp"},
    )
    with pytest.raises(SpecError, match="dense tasks need feature maps"):
        load_spec(doc)


def test_local_weights_file_is_loaded(tmp_path) -> None:
    import timm

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=0)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    built = build_encoder(_bb("timm:test_resnet", pretrained=str(tmp_path / "w.pth")), (3, 32, 32))
    for (name, a), b in zip(source.state_dict().items(), built.branch.model.state_dict().values()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------
# Your own encoder (backbone.name: "package.module:factory") and local weights files
# ----------------------------------------------------------------------------------------------

EXAMPLES = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples"


def returns_int(input_shape: tuple[int, ...]) -> int:
    return 3


def returns_maps_of_one_sample(input_shape: tuple[int, ...]) -> torch.nn.Module:
    return torch.nn.Conv2d(input_shape[0], 4, 3)  # a single (B, C, H, W) tensor: neither contract


def records_its_arguments(input_shape: tuple[int, ...], width: int = 4) -> torch.nn.Module:
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_shape[0], width))
    module.called_with = (input_shape, width)  # type: ignore[assignment]
    return module


@pytest.fixture()
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


def _user_doc(**backbone) -> dict:
    return planted_doc(backbone={"name": "user_encoder:gated_mlp", **backbone})


def test_user_encoder_gets_its_keys_and_the_input_shape() -> None:
    built = build_encoder(_bb(f"{__name__}:records_its_arguments", width=6), (8,))
    assert built.branch.module.called_with == ((8,), 6)
    assert built.stem is None and built.features.kind == "vector" and built.features.width == 6


def test_user_encoder_example_searches(examples_on_path: None) -> None:
    import dmtg_nas

    spec = load_spec(
        EXAMPLES / "user_encoder.yaml",
        ["strategy.epochs=1", "strategy.finetune.epochs=0", "strategy.warmup.min_steps=0"],
    )
    assert spec.backbone.name == "user_encoder:gated_mlp"
    result = dmtg_nas.search(spec, None, progress=False)
    assert sorted(t for g in result.groups for t in g) == spec.task_names


def test_user_encoder_maps_feed_dense_and_vector_heads(examples_on_path: None) -> None:
    built = build_encoder(_bb("user_encoder:tiny_maps", width=4), (3, 16, 16), maps=True)
    assert built.features.kind == "maps" and built.features.channels == (4, 8)
    assert built.features.reductions == (2, 4)
    seg = TaskConfig(name="s", type="segmentation", num_classes=3)
    head = build_head(seg, built.features, HeadsConfig(), (16, 16))
    assert head(built.branch(torch.randn(2, 3, 16, 16))).shape == (2, 3, 16, 16)
    with pytest.raises(SpecError, match=r"'user_encoder:gated_mlp' must return a list of feature maps .*\(dense tasks"):
        build_encoder(_bb("user_encoder:gated_mlp"), (3, 16, 16), maps=True)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("returns_int", "must return a torch.nn.Module, got int"),
        (
            "returns_maps_of_one_sample",
            r"must return a \(B, D\) tensor or a list of \(B, C, H, W\) maps for a batch "
            r"of B=2, got a tensor of shape \(2, 4, 14, 14\)",
        ),
        ("records_its_arguments", r"fails on a dummy batch of shape \(2, 3, 16, 16\): RuntimeError: mat1 and mat2"),
    ],
)
def test_user_encoder_output_is_checked_in_one_line(name: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        build_encoder(_bb(f"{__name__}:{name}"), (3, 16, 16))
    assert "\n" not in str(info.value)


def test_user_encoder_is_one_unit() -> None:
    with pytest.raises(SpecError, match="is one unit: shared_stem must be 0"):
        load_spec(planted_doc(backbone={"name": f"{__name__}:records_its_arguments", "shared_stem": 1}))


def test_validate_builds_the_user_encoder(examples_on_path: None, capsys: pytest.CaptureFixture[str]) -> None:
    from dmtg_nas.cli import main

    spec = str(EXAMPLES / "user_encoder.yaml")
    assert main(["validate", spec]) == 0
    assert "backbone user_encoder:gated_mlp" in capsys.readouterr().out
    assert main(["validate", spec, "--set", "backbone.hidden=3"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "dmtg: error: backbone: 'user_encoder:gated_mlp' failed to build: "
        "TypeError: Value after * must be an iterable, not int\n"
    )
    assert main(["validate", spec, "--set", "backbone.name=user_encoder:missing"]) == 2
    assert "module 'user_encoder' has no attribute 'missing'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["timm:test_resnet", f"{__name__}:records_its_arguments"])
def test_pretrained_true_is_refused_with_the_local_file_key(name: str) -> None:
    with pytest.raises(
        SpecError,
        match=r"true would download weights, which is never done: give a local weights "
        r"file instead, pretrained: path/to/weights\.pth",
    ) as info:
        load_spec(planted_doc(backbone={"name": name, "pretrained": True}))
    assert info.value.key == "backbone.pretrained"


def test_weights_that_do_not_fit_are_refused_by_validate(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import timm
    import yaml

    from dmtg_nas.cli import main

    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), tmp_path / "other.pth")
    doc = planted_doc(backbone={"name": "timm:test_resnet", "pretrained": "other.pth"})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    assert main(["validate", str(tmp_path / "s.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{tmp_path / 'other.pth'} does not fit 'timm:test_resnet': missing keys (85): conv1.0.weight, " in err
    assert "unexpected keys (81): conv_stem.weight, " in err
    assert "shape mismatch (4): bn1.weight file (24,) model (32,), " in err


def test_user_encoder_weights_are_loaded_and_checked(tmp_path) -> None:
    from safetensors.torch import save_file

    source = records_its_arguments((8,), 6)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    built = build_encoder(
        _bb(f"{__name__}:records_its_arguments", width=6, pretrained=str(tmp_path / "w.safetensors")), (8,)
    )
    assert torch.equal(built.branch.module[1].weight, source[1].weight)
    with pytest.raises(
        SpecError,
        match=r"w\.safetensors does not fit .*: shape mismatch \(2\): 1\.weight file \(6, 8\) "
        r"model \(5, 8\)",
    ):
        build_encoder(
            _bb(f"{__name__}:records_its_arguments", width=5, pretrained=str(tmp_path / "w.safetensors")), (8,)
        )


def test_one_wide_heads_output_b_by_1_as_documented() -> None:
    from pathlib import Path

    table = (Path(__file__).resolve().parent.parent / "docs" / "reference" / "search-spaces.md").read_text()
    for kind in ("regression", "binary"):
        head = build_head(TaskConfig(name="a", type=kind), 8, HeadsConfig())
        assert head(torch.randn(5, 8)).shape == (5, 1)
        row = next(line for line in table.splitlines() if line.startswith(f"| `{kind}` |"))
        assert row.split("|")[2].strip().startswith("(B, 1)"), row
