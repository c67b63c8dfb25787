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
