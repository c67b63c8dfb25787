"""The encoders a spec can name, as the spec layer sees them: their options, inputs, stage counts
and width scaling (:mod:`dmtg_nas.backbones` builds them).

| name              | inputs  | what it is                                                  |
|-------------------|---------|-------------------------------------------------------------|
| ``mlp``           | vectors | Linear -> [norm] -> activation -> [dropout] per hidden width |
| ``convnet``       | images  | a small CNN: per stage conv3x3 -> BN -> ReLU -> maxpool 2    |
| ``celeba_resnet`` | images  | TAG's tiny CelebA ResNet (two stages)                        |
| ``timm:<model>``  | images  | any timm model (the ``timm`` family)                        |
| ``pkg.mod:fn``    | any     | your own encoder: ``fn(input_shape=..., **other keys)``     |
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..schema import StrictModel, Width
from .base import EncoderEntry

__all__ = [
    "CelebAResNetOptions",
    "ConvNetOptions",
    "MLPOptions",
    "TimmOptions",
    "CELEBA_RESNET",
    "CONVNET",
    "MLP",
    "TIMM",
    "USER",
    "UserEncoderOptions",
]


class MLPOptions(StrictModel):
    hidden: list[Width] = Field(default_factory=lambda: [64, 64], min_length=1)
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    norm: Literal["none", "batch", "layer"] = "none"


class ConvNetOptions(StrictModel):
    channels: list[Width] = Field(default_factory=lambda: [16, 32, 64], min_length=1, max_length=16)
    dropout: float = Field(default=0.0, ge=0, lt=1)  # before the pooled vector


class CelebAResNetOptions(StrictModel):
    width: Width = 64  # channels of the conv stem and the residual block


class TimmOptions(StrictModel):
    """The model itself is named in ``backbone.name`` (``timm:<model>``)."""

    # false, or a local .pth/.safetensors file (true is refused: nothing is ever downloaded)
    pretrained: bool | str = False
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to timm.create_model


def _scaled(width: int, factor: float) -> int:
    return max(1, round(width * factor))


MLP = EncoderEntry(
    MLPOptions,
    "vector",
    lambda o: len(o.hidden),
    lambda o, f: {"hidden": [_scaled(h, f) for h in o.hidden]},
    "multilayer perceptron",
)
CONVNET = EncoderEntry(
    ConvNetOptions,
    "image",
    lambda o: len(o.channels),
    lambda o, f: {"channels": [_scaled(c, f) for c in o.channels]},
    "small CNN",
)
CELEBA_RESNET = EncoderEntry(
    CelebAResNetOptions,
    "image",
    lambda o: 2,
    lambda o, f: {"width": _scaled(o.width, f)},
    "TAG's tiny CelebA ResNet",
)
# timm models have the widths of their architecture; their stages are counted on the built model
TIMM = EncoderEntry(TimmOptions, "image", None, None, "any timm model", model_name=True)


class UserEncoderOptions(BaseModel):
    """Your own encoder (``backbone.name: "package.module:factory"``): every key but ``pretrained``
    is passed to the factory as a keyword argument."""

    model_config = ConfigDict(extra="allow", strict=True)
    pretrained: bool | str = False  # false, or a local state_dict file (.pth/.safetensors) loaded into the module


# user encoders: no stages to share, no widths to scale, whatever inputs the factory takes
USER = EncoderEntry(UserEncoderOptions, "any", None, None, "your own encoder")
