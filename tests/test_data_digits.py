"""digits: scikit-learn's bundled images with derived attributes."""

from __future__ import annotations

import pytest
import torch

from dmtg_nas import SpecError, load_spec
from dmtg_nas.components import load_data
from dmtg_nas.data.digits import DIGIT_ATTRIBUTES


def test_attributes_follow_the_digit() -> None:
    from sklearn.datasets import load_digits

    assert len(DIGIT_ATTRIBUTES) >= 8
    spec = load_spec(
        "digits", ["dataset.size=8", "tasks.0.name=digit", "tasks.0.type=multiclass", "tasks.0.num_classes=10"]
    )
    data = load_data(spec)
    assert data.input_shape == (1, 8, 8)
    assert sum(data.sizes().values()) == len(load_digits().target)
    _, y = data.train[list(range(len(data.train)))]  # type: ignore[index, arg-type]
    for name, members in DIGIT_ATTRIBUTES.items():
        if name in y:
            expected = torch.tensor([float(int(d) in members) for d in y["digit"]])
            assert torch.equal(y[name], expected), name


def test_default_preset_shapes_and_seeded_split() -> None:
    a = load_data(load_spec("digits"))
    b = load_data(load_spec("digits", ["dataset.split.seed=1"]))
    assert a.input_shape == (1, 16, 16) and len(a.test) == round(0.25 * 1797)  # type: ignore[arg-type]
    assert not torch.equal(a.test.x, b.test.x)  # type: ignore[attr-defined]
    assert torch.equal(a.test.x, load_data(load_spec("digits")).test.x)  # type: ignore[attr-defined]


def test_unknown_attribute_suggests() -> None:
    with pytest.raises(SpecError, match="did you mean 'closed_loop'") as info:
        load_spec("digits", ["tasks.4.name=closed_lop"])
    assert info.value.key == "tasks[4].name"


def test_table_layout_gives_standardised_pixel_vectors() -> None:
    from sklearn.datasets import load_digits

    overrides = ["dataset.layout=table", "backbone={name: mlp, hidden: [32, 8]}"]
    data = load_data(load_spec("digits", overrides))
    n = len(load_digits().target)
    assert data.input_shape == (64,) and data.info["layout"] == "table"
    assert data.sizes() == {
        "train": n - round(0.15 * n) - round(0.25 * n),
        "val": round(0.15 * n),
        "test": round(0.25 * n),
    }
    train = data.train.x  # type: ignore[attr-defined]
    assert train.shape == (data.sizes()["train"], 64) and data.test.x.shape == (data.sizes()["test"], 64)  # type: ignore[attr-defined]
    std = train.std(dim=0, unbiased=False)
    varying = std > 0  # pixels blank in every training image stay 0
    assert torch.allclose(train.mean(dim=0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(std[varying], torch.ones(int(varying.sum())), atol=1e-4) and 0 < (~varying).sum() < 10
    assert torch.equal(train[:, ~varying], torch.zeros_like(train[:, ~varying]))
    # the same images and split as the image layout: pixel by pixel, an affine map of the 8x8 images
    image = load_data(load_spec("digits", ["dataset.size=8"]))
    flat = image.train.x.reshape(len(image.train), 64)  # type: ignore[attr-defined]
    for j in torch.nonzero(varying).flatten()[:5].tolist():
        assert torch.corrcoef(torch.stack([flat[:, j], train[:, j]]))[0, 1] > 0.9999
    # size and channels belong to the image layout: the shipped space's own values are left unused
    assert load_data(load_spec("digits", [*overrides, "dataset.size=32", "dataset.channels=3"])).input_shape == (64,)


def test_table_layout_is_checked() -> None:
    from dmtg_nas.backbones import build_encoder

    with pytest.raises(SpecError, match="did you mean 'table'") as info:
        load_spec("digits", ["dataset.layout=tabel"])
    assert info.value.key == "dataset.layout"
    spec = load_spec("digits", ["dataset.layout=table"])  # the space's conv encoder cannot read pixel vectors
    with pytest.raises(SpecError, match="'convnet' needs image inputs"):
        build_encoder(spec.backbone, load_data(spec).input_shape)
