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
