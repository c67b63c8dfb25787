"""The catalog (the names a spec may use, without torch) and the layer above it agree."""

from __future__ import annotations

import pytest

from dmtg_nas.backbones import STAGES
from dmtg_nas.catalog import DATASETS, ENCODERS, encoder_entry
from dmtg_nas.config import BackboneConfig
from dmtg_nas.data import DATASETS as LOADERS
from dmtg_nas.errors import SpecError


def test_every_catalogued_data_set_has_a_loader_with_the_same_options() -> None:
    assert DATASETS.names() == LOADERS.names()
    for name in DATASETS.names():
        assert LOADERS.lookup(name).Options is DATASETS.lookup(name).Options


def test_every_catalogued_encoder_is_built_by_the_backbones() -> None:
    for name in ENCODERS.names():
        entry = ENCODERS.lookup(name)
        assert entry.model_name or name in STAGES


def test_timm_is_one_family_with_the_model_in_the_name() -> None:
    parsed = encoder_entry(BackboneConfig(name="timm:test_resnet", pretrained=False))  # type: ignore[call-arg]
    assert (parsed.family, parsed.model, parsed.entry) == ("timm", "test_resnet", ENCODERS.lookup("timm"))
    assert parsed.options.pretrained is False
    for bad in ("timm", "timm:", "mlp:x"):
        with pytest.raises(SpecError, match="unknown backbone") as info:
            encoder_entry(BackboneConfig(name=bad))
        assert info.value.key == "backbone.name" and "'timm:<model name>'" in str(info.value)
