"""Branch encoders, the shared stem, and task heads.

``backbone.name`` is a registered encoder or ``timm:<model name>`` (any timm model, built without
downloading anything; ``pretrained`` may name a local .pth/.safetensors file):

| name            | inputs        | what it is                                                             |
|-----------------|---------------|------------------------------------------------------------------------|
| ``mlp``         | vectors       | Linear -> [norm] -> activation -> [dropout] per hidden width           |
| ``convnet``     | images        | a small CNN: per stage conv3x3 -> BN -> ReLU -> maxpool 2              |
| ``celeba_resnet`` | images      | TAG's tiny CelebA ResNet: conv3x3(64)+BN+ReLU, maxpool 3/2, one basic  |
|                 |               | residual block, avgpool 2, flatten (14,400 features at 64x64)          |
| ``timm:<model>``| images        | any timm model                                                         |

What a branch returns depends on the tasks:

- only vector tasks (binary, multiclass, regression): a pooled vector (B, D) and linear heads (the
  fast path; for timm models with ``shared_stem: 0`` it is the model's own pooled features);
- any dense task (segmentation, depth, normals, keypoints, edges): the list of the encoder's
  feature maps, shallow to deep, [(B, C_j, H_j, W_j)], from timm's ``features_only`` stages. Dense
  heads are small decoders (:class:`DenseHead`) fusing the last maps and upsampling to the input
  size; vector heads then average-pool the last map.

``shared_stem: k`` splits the encoder after its k-th stage: one copy of stages 1..k (the *stem*) is
shared by all branches, and each branch holds the remaining stages. Stages are the hidden layers of
``mlp``, the conv stages of ``convnet``, the two stages of ``celeba_resnet`` and the ``feature_info``
stages of a timm model (for timm the split is checked against the model's own
``forward_intermediates``; models that are not a chain of stages, such as ViTs, support
``shared_stem: 0`` only). Feature widths are always read from the built model by a dummy forward.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from .config import BackboneConfig, HeadsConfig, StrictModel, TaskConfig, Width, validate_model
from .errors import SpecError, allowed, suggest
from .registry import Registry

__all__ = [
    "BACKBONES",
    "BACKBONE_NAMES",
    "BuiltEncoder",
    "ConvNetOptions",
    "CelebAResNetOptions",
    "DenseHead",
    "EncoderPart",
    "FeatureSpec",
    "MLPOptions",
    "TimmOptions",
    "build_encoder",
    "build_head",
    "check_backbone",
    "num_stages",
    "scale_backbone",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}

Features = Tensor | list[Tensor]  # what a branch returns: (B, D) or [(B, C_j, H_j, W_j), ...]


# ----------------------------------------------------------------------------------------------
# Options of the registered encoders
# ----------------------------------------------------------------------------------------------


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
    pretrained: bool | str = False  # false, or a local .pth/.safetensors file (never a download)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to timm.create_model


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """What a branch returns: ``vector`` (B, width) or ``maps`` (a list, ``channels[j]`` channels at
    stride ``reductions[j]``; ``width`` = channels of the last map)."""

    kind: Literal["vector", "maps"]
    width: int
    channels: tuple[int, ...] = ()
    reductions: tuple[int, ...] = ()


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
        self.model = _create_timm(model_name, in_chans, options, num_classes=0)
        width = getattr(self.model, "head_hidden_size", None) or getattr(self.model, "num_features", None)
        self.out_features = int(width) if width else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # type: ignore[no-any-return]


class EncoderPart(nn.Module):
    """Consecutive stages of an encoder.

    Input: images (B, C, H, W), or the list of maps an earlier part (the shared stem) returned, in
    which case it continues from the last map and appends its own. Output: the list of all maps so
    far, or, when ``pool`` is set, ``pool(last output)`` of shape (B, D).
    """

    def __init__(self, stages: Sequence[nn.Module], pool: nn.Module | None) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool = pool

    def forward(self, x: Features) -> Features:
        maps = list(x) if isinstance(x, (list, tuple)) else []
        h = maps[-1] if maps else x
        assert isinstance(h, Tensor)
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return self.pool(h) if self.pool is not None else maps  # type: ignore[no-any-return]


class MapsEncoder(nn.Module):
    """A timm ``features_only`` model as one unit: (B, C, H, W) -> [(B, C_j, H_j, W_j), ...]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.model(x))


class GlobalPool(nn.Module):
    """(B, C, H, W) -> (B, C) by averaging."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))


class BasicBlock(nn.Module):
    """ResNet basic block: x + BN(conv3x3(ReLU(BN(conv3x3(x))))), then ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


@dataclass
class Staged:
    """An encoder as a chain of stages plus the pooling that turns the last stage into a vector."""

    stages: list[nn.Module]
    pool: nn.Module
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# The registry of named encoders
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneType:
    """A registered encoder: its options model, the inputs it takes and how to build its stages."""

    Options: type[BaseModel]
    inputs: Literal["vector", "image"]
    stages: Callable[[Any, tuple[int, ...]], Staged]
    count: Callable[[Any], int]
    description: str = ""
    # the options with every layer's width multiplied by a factor (see scale_backbone)
    scale: Callable[[Any, float], dict[str, Any]] | None = None


def _mlp_stages(options: MLPOptions, input_shape: tuple[int, ...]) -> Staged:
    in_features = 1
    for s in input_shape:
        in_features *= s
    stages: list[nn.Module] = []
    width = in_features
    for h in options.hidden:
        stages.append(MLP(width, options.model_copy(update={"hidden": [h]})))
        width = h
    return Staged(stages, nn.Identity())


def _convnet_stages(options: ConvNetOptions, input_shape: tuple[int, ...]) -> Staged:
    stages: list[nn.Module] = []
    width = input_shape[0]
    for c in options.channels:
        stages.append(
            nn.Sequential(
                nn.Conv2d(width, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)
            )
        )
        width = c
    pool: nn.Module = GlobalPool()
    if options.dropout:
        pool = nn.Sequential(GlobalPool(), nn.Dropout(options.dropout))
    return Staged(stages, pool)


def _celeba_resnet_stages(options: CelebAResNetOptions, input_shape: tuple[int, ...]) -> Staged:
    w = options.width
    stem = nn.Sequential(
        nn.Conv2d(input_shape[0], w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
    )
    body = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=2), BasicBlock(w))
    return Staged([stem, body], nn.Sequential(nn.AvgPool2d(2), nn.Flatten()))


BACKBONES: Registry[BackboneType] = Registry("backbone")


def _scaled(width: int, factor: float) -> int:
    return max(1, round(width * factor))


BACKBONES.add(
    "mlp",
    BackboneType(
        MLPOptions,
        "vector",
        _mlp_stages,
        lambda o: len(o.hidden),
        "multilayer perceptron",
        lambda o, f: {"hidden": [_scaled(h, f) for h in o.hidden]},
    ),
)
BACKBONES.add(
    "convnet",
    BackboneType(
        ConvNetOptions,
        "image",
        _convnet_stages,
        lambda o: len(o.channels),
        "small CNN",
        lambda o, f: {"channels": [_scaled(c, f) for c in o.channels]},
    ),
)
BACKBONES.add(
    "celeba_resnet",
    BackboneType(
        CelebAResNetOptions,
        "image",
        _celeba_resnet_stages,
        lambda o: 2,
        "TAG's tiny CelebA ResNet",
        lambda o, f: {"width": _scaled(o.width, f)},
    ),
)
BACKBONE_NAMES = [*BACKBONES.names(), "timm:<model name>"]


# ----------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------


def _timm_kwargs(in_chans: int, options: TimmOptions) -> dict[str, Any]:
    kwargs = dict(options.kwargs)
    kwargs.setdefault("in_chans", in_chans)
    if isinstance(options.pretrained, str):
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = {"file": options.pretrained}
    else:
        kwargs["pretrained"] = False
    return kwargs


def _create_timm(model_name: str, in_chans: int, options: TimmOptions, **extra: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(model_name, **{**_timm_kwargs(in_chans, options), **extra})  # type: ignore[no-any-return]
    except (TypeError, ValueError, RuntimeError, AssertionError, OverflowError) as exc:
        if isinstance(options.pretrained, str) and "weights_only" in str(exc):  # timm never falls back to pickle
            raise SpecError(
                f"{options.pretrained}: refused: the weights file holds pickled Python objects, which are never "
                "loaded; use a state_dict of tensors (.pth) or .safetensors",
                key="backbone.pretrained",
            ) from None
        raise SpecError(f"timm cannot build {model_name!r} with these kwargs: {exc}", key="backbone") from None


def _timm_stages(model_name: str, input_shape: tuple[int, ...], options: TimmOptions) -> Staged | None:
    """Split a timm model into its ``feature_info`` stages; None when it is not a chain of stages
    (checked against the model's own ``forward_intermediates`` on a dummy input)."""
    from timm.models._features import FeatureListNet

    base = _create_timm(model_name, input_shape[0], options, num_classes=0)
    info = getattr(base, "feature_info", None)
    if not info or not hasattr(base, "forward_intermediates"):
        return None
    n = len(info)
    net: nn.ModuleDict | None = None
    for flatten in (False, True):
        try:
            net = FeatureListNet(base, out_indices=tuple(range(n)), flatten_sequential=flatten)
            break
        except (AssertionError, ValueError, TypeError, RuntimeError):
            net = None
    if net is None:
        return None
    return_layers = set(getattr(net, "return_layers", {}))
    stages: list[nn.Module] = []
    current: OrderedDict[str, nn.Module] = OrderedDict()
    for name, module in net.items():
        current[name] = module
        if name in return_layers:
            stages.append(nn.Sequential(current))
            current = OrderedDict()
    if len(stages) != n:
        return None
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
            expected = base.forward_intermediates(x, indices=list(range(n)), intermediates_only=True)  # type: ignore[operator]
            h, ok = x, len(expected) == n
            for stage, ref in zip(stages, expected):
                h = stage(h)
                ok = ok and h.shape == ref.shape and torch.allclose(h, ref, atol=1e-4, rtol=1e-3)
    except Exception:
        return None
    finally:
        base.train(was_training)
    return Staged(stages, GlobalPool()) if ok else None


def _timm_name(config: BackboneConfig) -> str:
    return config.name.removeprefix("timm:")


# ----------------------------------------------------------------------------------------------
# Validation and building
# ----------------------------------------------------------------------------------------------


def _options(config: BackboneConfig) -> dict[str, Any]:
    return {k: v for k, v in (config.model_extra or {}).items()}


def check_backbone(config: BackboneConfig, input_rank: int | None = None) -> BaseModel:
    """Validate the backbone section (name, options, ``shared_stem`` depth) without building it."""
    if config.name.startswith("timm:"):
        import timm

        model_name = _timm_name(config)
        if not timm.is_model(model_name):
            raise SpecError(
                f"unknown timm model {model_name!r}{suggest(model_name, timm.list_models())}",
                key="backbone.name",
            )
        parsed: BaseModel = validate_model(TimmOptions, _options(config), "backbone")
        assert isinstance(parsed, TimmOptions)
        if isinstance(parsed.pretrained, str) and not Path(parsed.pretrained).is_file():
            raise SpecError(f"weights file not found: {parsed.pretrained}", key="backbone.pretrained")
        if input_rank is not None and input_rank != 3:
            raise SpecError(
                f"timm encoders need image inputs (C, H, W); this data set gives {input_rank}-d inputs: use 'mlp'",
                key="backbone.name",
            )
    else:
        try:
            kind = BACKBONES.lookup(config.name)
        except SpecError:
            names = [*BACKBONES.names(), "timm:"]
            raise SpecError(
                f"unknown backbone {config.name!r}{suggest(config.name, names)}; "
                f"allowed: {allowed(BACKBONES.names())} or 'timm:<model name>'",
                key="backbone.name",
            ) from None
        parsed = validate_model(kind.Options, _options(config), "backbone")
        if input_rank is not None and kind.inputs == "image" and input_rank != 3:
            raise SpecError(
                f"{config.name!r} needs image inputs (C, H, W); this data set gives {input_rank}-d inputs: use 'mlp'",
                key="backbone.name",
            )
    if config.shared_stem:
        stages = num_stages(config, parsed)
        if config.shared_stem >= stages:
            raise SpecError(
                f"shared_stem {config.shared_stem} leaves no stage to branch: {config.name} has {stages} stages "
                f"(allowed: 0 to {stages - 1})",
                key="backbone.shared_stem",
            )
    return parsed


def scale_backbone(config: BackboneConfig, factor: float) -> BackboneConfig:
    """``config`` with every layer's width multiplied by ``factor`` (rounded, at least 1): ``mlp``
    hidden widths, ``convnet`` channels, ``celeba_resnet`` width. timm models have the widths of
    their architecture and are returned unchanged, as is everything with ``factor`` 1."""
    if factor == 1 or config.name.startswith("timm:"):
        return config
    scale = BACKBONES.lookup(config.name).scale
    if scale is None:
        return config
    return BackboneConfig.model_validate({**config.model_dump(), **scale(check_backbone(config), factor)})


def num_stages(config: BackboneConfig, options: BaseModel | None = None) -> int:
    """How many stages ``shared_stem`` can count (timm: ``len(feature_info)``, built on the meta device)."""
    if options is None:
        options = check_backbone(config.model_copy(update={"shared_stem": 0}))
    if config.name.startswith("timm:"):
        import timm

        assert isinstance(options, TimmOptions)
        kwargs = {k: v for k, v in options.kwargs.items()}
        try:
            with torch.device("meta"):
                model = timm.create_model(_timm_name(config), pretrained=False, **kwargs)
        except (TypeError, ValueError, RuntimeError, AssertionError, OverflowError) as exc:
            raise SpecError(
                f"timm cannot build {_timm_name(config)!r} with these kwargs: {exc}", key="backbone"
            ) from None
        return len(getattr(model, "feature_info", []) or [])
    return BACKBONES.lookup(config.name).count(options)


@dataclass
class BuiltEncoder:
    """One encoder split for the grouping space: ``stem`` (shared; None when ``shared_stem`` is 0),
    ``branch`` (copied K times) and what the branch returns."""

    stem: nn.Module | None
    branch: nn.Module
    features: FeatureSpec


def build_encoder(config: BackboneConfig, input_shape: tuple[int, ...], *, maps: bool = False) -> BuiltEncoder:
    """Build one encoder for inputs of ``input_shape``: feature maps when ``maps`` (dense tasks),
    else pooled vectors; split after ``config.shared_stem`` stages."""
    options = check_backbone(config, len(input_shape))
    k = config.shared_stem
    stem: nn.Module | None
    branch: nn.Module
    if config.name.startswith("timm:"):
        assert isinstance(options, TimmOptions)
        name = _timm_name(config)
        if not maps and k == 0:
            stem, branch = None, TimmEncoder(name, input_shape[0], options)
        else:
            staged = _timm_stages(name, input_shape, options)
            if staged is not None:
                stem, branch = _split(staged, k, maps)
            elif k == 0:
                stem, branch = None, MapsEncoder(_create_timm(name, input_shape[0], options, features_only=True))
            else:
                raise SpecError(
                    f"timm model {name!r} is not a chain of stages, so its stem cannot be shared: use shared_stem: 0",
                    key="backbone.shared_stem",
                )
    else:
        kind = BACKBONES.lookup(config.name)
        if maps and kind.inputs == "vector":
            raise SpecError(
                f"dense tasks need feature maps; {config.name!r} gives vectors: use an image encoder "
                "such as 'convnet' or 'timm:<model>'",
                key="backbone.name",
            )
        if config.name == "mlp" and not maps and k == 0:
            assert isinstance(options, MLPOptions)
            stem, branch = None, MLP(_numel(input_shape), options)
        elif config.name == "mlp":
            assert isinstance(options, MLPOptions)
            first = MLP(_numel(input_shape), options.model_copy(update={"hidden": options.hidden[:k]}))
            rest = MLP(first.out_features, options.model_copy(update={"hidden": options.hidden[k:]}))
            stem, branch = first, rest
        else:
            stem, branch = _split(kind.stages(options, input_shape), k, maps)
    features = _probe(stem, branch, input_shape)
    branch.out_features = features.width  # type: ignore[assignment]
    return BuiltEncoder(stem, branch, features)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _split(staged: Staged, k: int, maps: bool) -> tuple[nn.Module | None, nn.Module]:
    pool = None if maps else staged.pool
    if k == 0:
        return None, EncoderPart(staged.stages, pool)
    return EncoderPart(staged.stages[:k], None), EncoderPart(staged.stages[k:], pool)


@torch.no_grad()
def _probe(stem: nn.Module | None, branch: nn.Module, input_shape: tuple[int, ...]) -> FeatureSpec:
    """Read what the branch returns from one dummy forward (eval mode, batch of 2)."""
    modules = [m for m in (stem, branch) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        x = torch.zeros(2, *input_shape)
        out = branch(stem(x) if stem is not None else x)
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    if isinstance(out, Tensor):
        return FeatureSpec("vector", int(out.flatten(1).shape[1]))
    size = input_shape[-1]
    channels = tuple(int(m.shape[1]) for m in out)
    reductions = tuple(max(1, round(size / int(m.shape[-1]))) for m in out)
    return FeatureSpec("maps", channels[-1], channels, reductions)


# ----------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------


class PooledHead(nn.Module):
    """A vector head on feature maps: global average of the last map, then ``head``."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, maps: Sequence[Tensor]) -> Tensor:  # [(B, C, H, W), ...] -> (B, out)
        return self.head(maps[-1].mean(dim=(-2, -1)))  # type: ignore[no-any-return]


class DenseHead(nn.Module):
    """A small FPN-style decoder for dense tasks.

    The last ``n`` maps are projected to ``width`` channels (1x1 convs), merged top-down
    (upsample the deeper, add the shallower), refined by conv3x3-BN-ReLU, projected to
    ``out_channels`` and bilinearly upsampled to ``out_size``: [(B, C_j, H_j, W_j)] -> (B, out, H, W).
    """

    def __init__(
        self, channels: Sequence[int], out_channels: int, out_size: tuple[int, int], width: int = 64, n: int = 3
    ) -> None:
        super().__init__()
        self.n = max(1, min(n, len(channels)))
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels[-self.n :])
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        maps = list(maps)[-self.n :]
        h = self.lateral[-1](maps[-1])
        for i in range(self.n - 2, -1, -1):
            skip = self.lateral[i](maps[i])
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
        h = self.out(self.fuse(h))
        if tuple(h.shape[-2:]) != self.out_size:
            h = F.interpolate(h, size=self.out_size, mode="bilinear", align_corners=False)
        return h


def _vector_head(task: TaskConfig, in_features: int, config: HeadsConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in config.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        width = h
    layers.append(nn.Linear(width, task.out_features))
    return nn.Sequential(*layers)


def build_head(
    task: TaskConfig,
    features: FeatureSpec | int,
    config: HeadsConfig,
    out_size: tuple[int, int] | None = None,
) -> nn.Module:
    """A task head for branch outputs described by ``features`` (an int: a vector of that width).

    Vector tasks: optional hidden layers then a linear layer to the task's width (on maps, after a
    global average pool). Dense tasks: a :class:`DenseHead` upsampling to ``out_size``.
    """
    spec = FeatureSpec("vector", features) if isinstance(features, int) else features
    if task.dense:
        if spec.kind != "maps":
            raise SpecError(f"dense task {task.name!r} needs an encoder that gives feature maps", key="backbone.name")
        if out_size is None:
            raise ValueError("dense heads need the output size")
        return DenseHead(spec.channels, task.out_features, out_size, config.decoder_width, config.decoder_maps)
    if spec.kind == "maps":
        return PooledHead(_vector_head(task, spec.width, config))
    return _vector_head(task, spec.width, config)
