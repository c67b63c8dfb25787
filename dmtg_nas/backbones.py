"""Branch encoders and task heads.

``backbone.name`` is ``mlp`` (vector inputs) or ``timm:<model name>`` (image inputs, any timm model,
built without downloading anything). Every encoder maps a batch to pooled features of shape
(B, out_features); the width is read from the built model, never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from .config import BackboneConfig, HeadsConfig, StrictModel, TaskConfig, validate_model
from .errors import SpecError, suggest

__all__ = ["MLPOptions", "TimmOptions", "build_backbone", "build_head", "check_backbone", "BACKBONE_NAMES"]

BACKBONE_NAMES = ["mlp", "timm:<model name>"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLPOptions(StrictModel):
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 64], min_length=1)
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    dropout: float = Field(default=0.0, ge=0, lt=1)
    norm: Literal["none", "batch", "layer"] = "none"


class TimmOptions(StrictModel):
    pretrained: bool | str = False  # false, or a local .pth/.safetensors file (never a download)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to timm.create_model


class MLP(nn.Sequential):
    """Linear -> [norm] -> activation -> [dropout], repeated; ``out_features`` = last width."""

    def __init__(self, in_features: int, options: MLPOptions) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for h in options.hidden:
            layers.append(nn.Linear(width, h))
            if options.norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            elif options.norm == "layer":
                layers.append(nn.LayerNorm(h))
            layers.append(_ACTIVATIONS[options.activation]())
            if options.dropout:
                layers.append(nn.Dropout(options.dropout))
            width = h
        super().__init__(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, out_features)
        return super().forward(x.flatten(1))


class TimmEncoder(nn.Module):
    """A timm model without its classifier: (B, C, H, W) -> pooled (B, out_features)."""

    def __init__(self, model_name: str, in_chans: int, options: TimmOptions) -> None:
        super().__init__()
        import timm

        kwargs = dict(options.kwargs)
        kwargs.setdefault("in_chans", in_chans)
        if isinstance(options.pretrained, str):
            kwargs["pretrained"] = True
            kwargs["pretrained_cfg_overlay"] = {"file": options.pretrained}
        else:
            kwargs["pretrained"] = False
        self.model = timm.create_model(model_name, num_classes=0, **kwargs)
        width = getattr(self.model, "head_hidden_size", None) or getattr(self.model, "num_features", None)
        self.out_features = int(width) if width else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # type: ignore[no-any-return]


def check_backbone(config: BackboneConfig, input_rank: int | None = None) -> MLPOptions | TimmOptions:
    """Validate the backbone section (name and options) without building anything heavy."""
    options = {k: v for k, v in (config.model_extra or {}).items()}
    if config.name == "mlp":
        return validate_model(MLPOptions, options, "backbone")
    if config.name.startswith("timm:"):
        import timm

        model_name = config.name.removeprefix("timm:")
        if not timm.is_model(model_name):
            raise SpecError(
                f"unknown timm model {model_name!r}{suggest(model_name, timm.list_models())}",
                key="backbone.name",
            )
        parsed = validate_model(TimmOptions, options, "backbone")
        if isinstance(parsed.pretrained, str) and not Path(parsed.pretrained).is_file():
            raise SpecError(f"weights file not found: {parsed.pretrained}", key="backbone.pretrained")
        if input_rank is not None and input_rank != 3:
            raise SpecError(
                f"timm encoders need image inputs (C, H, W); this data set gives {input_rank}-d inputs: use 'mlp'",
                key="backbone.name",
            )
        return parsed
    raise SpecError(
        f"unknown backbone {config.name!r}{suggest(config.name, ['mlp', 'timm:'])}; "
        "allowed: 'mlp' or 'timm:<model name>'",
        key="backbone.name",
    )


def build_backbone(config: BackboneConfig, input_shape: tuple[int, ...]) -> nn.Module:
    """Build one branch encoder for inputs of ``input_shape``; it has ``out_features``."""
    options = check_backbone(config, len(input_shape))
    if isinstance(options, MLPOptions):
        in_features = 1
        for s in input_shape:
            in_features *= s
        return MLP(in_features, options)
    encoder = TimmEncoder(config.name.removeprefix("timm:"), input_shape[0], options)
    if not encoder.out_features:
        with torch.no_grad():
            encoder.eval()
            encoder.out_features = int(encoder(torch.zeros(1, *input_shape)).shape[-1])
    return encoder


def build_head(task: TaskConfig, in_features: int, config: HeadsConfig) -> nn.Module:
    """A task head: optional hidden layers, then a linear layer to the task's output width."""
    layers: list[nn.Module] = []
    width = in_features
    for h in config.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        width = h
    layers.append(nn.Linear(width, task.out_features))
    return nn.Sequential(*layers)
