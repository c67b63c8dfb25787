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
| ``pkg.mod:fn``  | any           | your own encoder: ``fn(input_shape=(...), **other keys)`` -> nn.Module  |

Your own encoder (``backbone: {name: "package.module:factory", ...}``): the factory is imported and
called with ``input_shape`` (one sample's shape, e.g. ``(3, 64, 64)`` or ``(32,)``) and the
backbone's other keys as keyword arguments; it returns an ``nn.Module`` that maps a batch
(B, *input_shape) to a feature vector (B, D), or, for dense tasks, to a list of feature maps
[(B, C_j, H_j, W_j), ...] shallow to deep. It is one unit (``shared_stem: 0``); ``pretrained`` names
a local state_dict file for it. Its output is checked on a dummy batch when it is built.

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
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .catalog import ENCODERS, encoder_entry
from .catalog.checks import ParsedEncoder, check_shared_stem
from .catalog.encoders import CelebAResNetOptions, ConvNetOptions, MLPOptions, TimmOptions, UserEncoderOptions
from .errors import SpecError, suggest
from .registry import import_object
from .schema import BackboneConfig, HeadsConfig, TaskConfig

__all__ = [
    "STAGES",
    "BuiltEncoder",
    "ConvNetOptions",
    "CelebAResNetOptions",
    "DenseHead",
    "EncoderPart",
    "FeatureSpec",
    "MLPOptions",
    "TimmOptions",
    "UserEncoder",
    "build_encoder",
    "check_weights",
    "build_head",
    "check_backbone",
    "num_stages",
    "scale_backbone",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}

Features = Tensor | list[Tensor]  # what a branch returns: (B, D) or [(B, C_j, H_j, W_j), ...]


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


class UserEncoder(nn.Module):
    """Your own encoder's module (``module``); a tuple of feature maps becomes a list (what the
    heads take)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Features:
        out = self.module(x)
        return list(out) if isinstance(out, (list, tuple)) else out  # type: ignore[no-any-return]


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


# the stages of the registered encoders that are a chain of stages (timm models: _timm_stages)
STAGES: dict[str, Callable[[Any, tuple[int, ...]], Staged]] = {
    "mlp": _mlp_stages,
    "convnet": _convnet_stages,
    "celeba_resnet": _celeba_resnet_stages,
}


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


def _create_timm(model_name: str, in_chans: int | None, options: TimmOptions, **extra: Any) -> nn.Module:
    import timm

    kwargs = _timm_kwargs(in_chans, options) if in_chans is not None else {**options.kwargs, "pretrained": False}
    try:
        return timm.create_model(model_name, **{**kwargs, **extra})  # type: ignore[no-any-return]
    except (TypeError, ValueError, RuntimeError, AssertionError, OverflowError) as exc:
        if isinstance(options.pretrained, str) and "weights_only" in str(exc):  # timm never falls back to pickle
            raise _refused(options.pretrained) from None
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


# ----------------------------------------------------------------------------------------------
# Validation and building
# ----------------------------------------------------------------------------------------------


def _refused(path: str) -> SpecError:
    return SpecError(
        f"{path}: refused: the weights file holds pickled Python objects, which are never loaded; use a "
        "state_dict of tensors (.pth) or .safetensors",
        key="backbone.pretrained",
    )


def check_backbone(config: BackboneConfig, input_rank: int | None = None) -> ParsedEncoder:
    """Validate the backbone section (name, options, ``shared_stem`` depth) without building it: the
    catalog's checks (:func:`~dmtg_nas.catalog.encoder_entry`), what needs timm itself (the model
    exists; its stages) and that ``pretrained`` weights hold tensors only and fit a timm model;
    with ``input_rank``, that the encoder takes inputs of that rank."""
    parsed = encoder_entry(config)
    pretrained = getattr(parsed.options, "pretrained", None)
    # tensors only (read without their data), before anything is written
    weights = _read_weights(pretrained, "meta") if isinstance(pretrained, str) else None
    if parsed.family == "user":
        if not callable(import_object(config.name, "backbone")):
            raise SpecError(f"{config.name!r} is not callable", key="backbone.name")
        return parsed
    if parsed.family == "timm" and parsed.model is not None:
        import timm

        if not timm.is_model(parsed.model):
            raise SpecError(
                f"unknown timm model {parsed.model!r}{suggest(parsed.model, timm.list_models())}",
                key="backbone.name",
            )
        if weights is not None:
            with torch.device("meta"):
                reference = _create_timm(parsed.model, None, parsed.options)
            classifier = (getattr(reference, "pretrained_cfg", None) or {}).get("classifier") or ()
            skip = (classifier,) if isinstance(classifier, str) else tuple(classifier)
            _check_fit(weights, parsed.options.pretrained, reference, config.name, skip)
    if input_rank is not None and parsed.entry.inputs == "image" and input_rank != 3:
        what = f"{parsed.family} encoders need" if parsed.entry.model_name else f"{config.name!r} needs"
        raise SpecError(
            f"{what} image inputs (C, H, W); this data set gives {input_rank}-d inputs: use 'mlp'",
            key="backbone.name",
        )
    if config.shared_stem and parsed.entry.stages is None:
        check_shared_stem(config, num_stages(config))
    return parsed


def scale_backbone(config: BackboneConfig, factor: float) -> BackboneConfig:
    """``config`` with every layer's width multiplied by ``factor`` (rounded, at least 1): ``mlp``
    hidden widths, ``convnet`` channels, ``celeba_resnet`` width. Encoders without widths to scale
    (timm models have the widths of their architecture) are returned unchanged, as is everything
    with ``factor`` 1."""
    if factor == 1:
        return config
    parsed = encoder_entry(config)
    if parsed.entry.scale is None:
        return config
    return BackboneConfig.model_validate({**config.model_dump(), **parsed.entry.scale(parsed.options, factor)})


def num_stages(config: BackboneConfig) -> int:
    """How many stages ``shared_stem`` can count (timm: ``len(feature_info)``, built on the meta device)."""
    parsed = encoder_entry(config.model_copy(update={"shared_stem": 0}))
    if parsed.entry.stages is not None:
        return parsed.entry.stages(parsed.options)
    import timm

    assert parsed.model is not None
    kwargs = {k: v for k, v in parsed.options.kwargs.items()}
    try:
        with torch.device("meta"):
            model = timm.create_model(parsed.model, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError, OverflowError) as exc:
        raise SpecError(f"timm cannot build {parsed.model!r} with these kwargs: {exc}", key="backbone") from None
    return len(getattr(model, "feature_info", []) or [])


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
    parsed = check_backbone(config, len(input_shape))
    options = parsed.options
    k = config.shared_stem
    stem: nn.Module | None
    branch: nn.Module
    if isinstance(options, UserEncoderOptions):
        stem, branch = None, _user_encoder(config, options, input_shape, maps)
    elif isinstance(options, TimmOptions):
        assert parsed.model is not None
        stem, branch = _timm_parts(parsed.model, options, input_shape, k, maps)
    elif maps and ENCODERS.lookup(config.name).inputs == "vector":
        raise SpecError(
            f"dense tasks need feature maps; {config.name!r} gives vectors: use an image encoder "
            "such as 'convnet' or 'timm:<model>'",
            key="backbone.name",
        )
    elif isinstance(options, MLPOptions) and k == 0:
        stem, branch = None, MLP(_numel(input_shape), options)
    elif isinstance(options, MLPOptions):
        first = MLP(_numel(input_shape), options.model_copy(update={"hidden": options.hidden[:k]}))
        rest = MLP(first.out_features, options.model_copy(update={"hidden": options.hidden[k:]}))
        stem, branch = first, rest
    else:
        stem, branch = _split(STAGES[config.name](options, input_shape), k, maps)
    features = _probe(stem, branch, input_shape)
    branch.out_features = features.width  # type: ignore[assignment]
    return BuiltEncoder(stem, branch, features)


def _user_encoder(
    config: BackboneConfig, options: UserEncoderOptions, input_shape: tuple[int, ...], maps: bool
) -> UserEncoder:
    """Build your own encoder and check it on a dummy batch: an ``nn.Module`` giving (B, D), or a
    list of (B, C, H, W) maps (required for dense tasks); load its ``pretrained`` weights."""
    name = config.name
    factory = import_object(name, "backbone")
    if not callable(factory):
        raise SpecError(f"{name!r} is not callable", key="backbone.name")
    kwargs = dict(options.model_extra or {})
    try:
        module = factory(input_shape=tuple(input_shape), **kwargs)
    except Exception as exc:  # the user's code: any failure becomes one line naming it
        raise SpecError(f"{name!r} failed to build: {_one_line(exc)}", key="backbone") from None
    if not isinstance(module, nn.Module):
        raise SpecError(f"{name!r} must return a torch.nn.Module, got {type(module).__name__}", key="backbone.name")
    encoder = UserEncoder(module)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = encoder(torch.zeros(2, *input_shape))
    except Exception as exc:
        shape = (2, *input_shape)
        raise SpecError(f"{name!r} fails on a dummy batch of shape {shape}: {_one_line(exc)}", key="backbone") from None
    finally:
        module.train(was_training)
    expected = (
        "a list of feature maps [(B, C, H, W), ...]" if maps else "a (B, D) tensor or a list of (B, C, H, W) maps"
    )
    if isinstance(out, Tensor):
        ok = not maps and out.dim() == 2 and out.shape[0] == 2
        got = f"a tensor of shape {tuple(out.shape)}"
    elif isinstance(out, list):
        ok = bool(out) and all(isinstance(m, Tensor) and m.dim() == 4 and m.shape[0] == 2 for m in out)
        got = "a list of shapes " + ", ".join(str(tuple(m.shape)) if isinstance(m, Tensor) else "?" for m in out)
    else:
        ok, got = False, type(out).__name__
    if not ok:
        need = " (dense tasks need feature maps)" if maps else ""
        raise SpecError(f"{name!r} must return {expected}{need} for a batch of B=2, got {got}", key="backbone")
    if isinstance(options.pretrained, str):
        check_weights(options.pretrained, module, name)
        module.load_state_dict(_read_weights(options.pretrained))
    return encoder


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _read_weights(path: str, device: str = "cpu") -> dict[str, Tensor]:
    """The tensors of a local weights file: .safetensors, or a torch file of tensors (a state_dict,
    possibly under ``state_dict``/``model``; a ``module.`` prefix is dropped). Pickled objects are
    never loaded."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as f:  # type: ignore[no-untyped-call]
                state: Any = {
                    k: torch.empty(f.get_slice(k).get_shape(), device="meta") if device == "meta" else f.get_tensor(k)
                    for k in f.keys()  # noqa: SIM118 (not a dict)
                }
        except Exception as exc:  # safetensors' errors are plain exceptions with a message
            raise SpecError(f"{path}: not a readable .safetensors file ({exc})", key="backbone.pretrained") from None
    else:
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            if "weights_only" in str(exc):
                raise _refused(path) from None
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise SpecError(f"{path}: not a readable weights file ({first})", key="backbone.pretrained") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SpecError(f"{path}: not a state_dict (a mapping of names to tensors)", key="backbone.pretrained")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_weights(path: str, model: nn.Module, name: str, skip: Sequence[str] = ()) -> None:
    """Refuse a weights file that does not fit ``model`` (built on any device, the meta device
    included), naming the first missing and unexpected keys and shape mismatches; keys under a
    prefix in ``skip`` (a timm classifier, which the encoder drops) are not compared."""
    _check_fit(_read_weights(path, "meta"), path, model, name, skip)


def _check_fit(state: dict[str, Tensor], path: str, model: nn.Module, name: str, skip: Sequence[str] = ()) -> None:
    """:func:`check_weights` on the weights' tensors ``state``, already read."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    kept = [k for k in (*expected, *state) if not any(k == p or k.startswith(p + ".") for p in skip)]
    missing = [k for k in dict.fromkeys(kept) if k not in state]
    unexpected = [k for k in dict.fromkeys(kept) if k not in expected]
    shapes = [
        f"{k} file {tuple(state[k].shape)} model {expected[k]}"
        for k in dict.fromkeys(kept)
        if k in state and k in expected and tuple(state[k].shape) != expected[k]
    ]
    problems = [
        f"{what} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
        if keys
    ]
    if problems:
        raise SpecError(f"{path} does not fit {name!r}: {'; '.join(problems)}", key="backbone.pretrained")


def _timm_parts(
    name: str, options: TimmOptions, input_shape: tuple[int, ...], k: int, maps: bool
) -> tuple[nn.Module | None, nn.Module]:
    """A timm model as (stem, branch): its own pooled features when nothing is shared and no maps
    are needed, else split into its ``feature_info`` stages (or, unsplit, its feature maps)."""
    if not maps and k == 0:
        return None, TimmEncoder(name, input_shape[0], options)
    staged = _timm_stages(name, input_shape, options)
    if staged is not None:
        return _split(staged, k, maps)
    if k == 0:
        return None, MapsEncoder(_create_timm(name, input_shape[0], options, features_only=True))
    raise SpecError(
        f"timm model {name!r} is not a chain of stages, so its stem cannot be shared: use shared_stem: 0",
        key="backbone.shared_stem",
    )


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
