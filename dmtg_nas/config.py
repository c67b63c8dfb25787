"""Declarative search spaces and strategies: YAML loading, ``_base_`` inheritance, ``--set``
overrides and validation.

A *search-space spec* names the tasks, the data, the branch encoder, the heads, the number of
branches K and the strategy. The strategy is a shipped preset name (``strategies/*.yaml``), a path,
or an inline mapping (which may itself start from a preset with ``_base_``). Every document is
validated before anything runs: unknown keys, wrong types and out-of-range values raise
:class:`~dmtg_nas.errors.SpecError` naming the file, the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import SpecError, allowed, suggest
from .presets import PresetKind, find_preset, list_presets

__all__ = [
    "MAX_EPOCHS",
    "MAX_SEED",
    "MAX_WIDTH",
    "Seed",
    "Width",
    "TaskConfig",
    "SplitConfig",
    "DatasetConfig",
    "BackboneConfig",
    "HeadsConfig",
    "TemperatureConfig",
    "OptimizerConfig",
    "LRScheduleConfig",
    "FinetuneConfig",
    "InitConfig",
    "WarmupConfig",
    "TrainerConfig",
    "StrategyConfig",
    "SearchSpec",
    "load_spec",
    "load_strategy",
    "resolve_document",
    "parse_override",
    "validate_model",
]

TaskType = Literal["regression", "binary", "multiclass", "segmentation", "depth", "normals", "keypoints", "edges"]
DENSE_TYPES = ("segmentation", "depth", "normals", "keypoints", "edges")

# Losses a task may use (``loss:`` in a task entry); the first one is the default.
TASK_LOSSES: dict[str, tuple[str, ...]] = {
    "regression": ("mse", "l1", "smooth_l1"),
    "binary": ("bce",),
    "multiclass": ("ce",),
    "segmentation": ("ce",),
    "depth": ("l1", "mse", "smooth_l1"),
    "normals": ("l1", "cosine"),
    "keypoints": ("l1", "mse"),
    "edges": ("l1", "mse"),
}
# Output channels of a head per task type (multiclass and segmentation: num_classes).
_TYPE_CHANNELS = {"regression": 1, "binary": 1, "depth": 1, "normals": 3, "keypoints": 1, "edges": 1}
Schedule = Literal["constant", "linear", "exponential", "cosine"]

# Upper bounds of numbers that size something. They are far above any real setting and keep every
# value within what torch, numpy and the random generators accept (1e30 epochs is a typo, not a plan).
MAX_SEED = 2**31 - 1
MAX_EPOCHS = 1_000_000
MAX_WIDTH = 65_536  # layer widths, channels, head sizes
MAX_BATCH = 1_048_576
MAX_COUNT = 1_000_000_000  # samples, steps, limits
Seed = typing.Annotated[int, Field(ge=0, le=MAX_SEED)]
Width = typing.Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Epochs = typing.Annotated[int, Field(ge=1, le=MAX_EPOCHS)]

# A spec document may not expand (through YAML anchors and aliases) beyond this many values, nor
# nest deeper than this: real specs hold a few hundred values, a handful of levels deep.
MAX_DOCUMENT_NODES = 200_000
MAX_DOCUMENT_DEPTH = 32


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, types are not coerced, floats must
    be finite (no ``.nan`` / ``.inf``)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


class TaskConfig(StrictModel):
    """One prediction task."""

    name: str = Field(min_length=1)
    type: TaskType
    num_classes: int | None = Field(default=None, ge=2, le=MAX_WIDTH)  # multiclass and segmentation
    weight: float = Field(default=1.0, gt=0)  # multiplies the task's loss
    loss: str | None = None  # override of the type's default loss (see TASK_LOSSES)
    # segmentation: target value that takes no loss and no metric
    ignore_index: int = Field(default=255, ge=-(2**31), le=2**31 - 1)
    threshold: float = Field(default=0.5, gt=0, lt=1)  # keypoints, edges: F1 binarises maps at this value

    @model_validator(mode="after")
    def _classes(self) -> TaskConfig:
        needs_classes = self.type in ("multiclass", "segmentation")
        if needs_classes and self.num_classes is None:
            raise ValueError(f"a {self.type} task needs 'num_classes' (an integer >= 2)")
        if not needs_classes and self.num_classes is not None:
            raise ValueError(f"'num_classes' applies to multiclass and segmentation tasks only, not {self.type!r}")
        if self.loss is not None and self.loss not in TASK_LOSSES[self.type]:
            choices = TASK_LOSSES[self.type]
            raise ValueError(
                f"loss {self.loss!r} does not apply to a {self.type} task{suggest(self.loss, choices)}; "
                f"allowed: {allowed(choices)}"
            )
        return self

    @property
    def out_features(self) -> int:
        """Channels of the head's output: 1 (regression, binary, depth, keypoints, edges), 3 (normals)
        or C (multiclass, segmentation)."""
        if self.type in ("multiclass", "segmentation"):
            return self.num_classes or 2
        return _TYPE_CHANNELS[self.type]

    @property
    def dense(self) -> bool:
        """True for per-pixel tasks (outputs of shape (B, C, H, W))."""
        return self.type in DENSE_TYPES

    @property
    def loss_name(self) -> str:
        """The loss this task trains with (the override or the type's default)."""
        return self.loss or TASK_LOSSES[self.type][0]


class SplitConfig(StrictModel):
    """Random train/validation/test split (for data sets without a fixed partition)."""

    val: float = Field(default=0.1, ge=0, lt=1)
    test: float = Field(default=0.1, ge=0, lt=1)
    seed: Seed = 0

    @model_validator(mode="after")
    def _sum(self) -> SplitConfig:
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must be below 1, got {self.val} + {self.test}")
        return self


class DatasetConfig(BaseModel):
    """``name`` picks a registered data set; the other keys are that data set's own options."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str


class BackboneConfig(BaseModel):
    """``name`` is a registered encoder (``mlp``, ``convnet``, ``celeba_resnet``) or ``timm:<model>``;
    the other keys are that encoder's options.

    ``shared_stem`` = k shares the encoder's first k stages between all branches and branches the
    rest (0: K fully separate encoders; the paper's sharing-depth ablation).
    """

    model_config = ConfigDict(extra="allow", strict=True)
    name: str
    shared_stem: int = Field(default=0, ge=0, le=MAX_WIDTH)


class HeadsConfig(StrictModel):
    """The per-task heads put on every branch (K*N of them during the search).

    Vector tasks: ``hidden`` layers then a linear layer. Dense tasks: a small decoder that fuses the
    last ``decoder_maps`` feature maps at ``decoder_width`` channels and upsamples to the input size.
    """

    hidden: list[Width] = Field(default_factory=list)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    decoder_width: Width = 64
    decoder_maps: int = Field(default=3, ge=1, le=64)


class TemperatureConfig(StrictModel):
    """Gumbel-softmax temperature tau over training (per optimisation step)."""

    schedule: Schedule = "constant"
    init: float = Field(default=2.5, gt=0)
    final: float | None = Field(default=None, gt=0)  # default: equal to init


class OptimizerConfig(StrictModel):
    """One optimizer over branch, head and grouping parameters (the method's default)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=8e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only
    logits_lr: float | None = Field(default=None, gt=0)  # own learning rate for the grouping logits


class LRScheduleConfig(StrictModel):
    """Learning-rate schedule, stepped per epoch."""

    name: Literal["none", "step", "multistep", "plateau", "cosine"] = "none"
    step_size: Epochs = 15  # step
    milestones: list[Epochs] = Field(default_factory=list)  # multistep
    gamma: float = Field(default=0.5, gt=0, le=1)  # step, multistep
    factor: float = Field(default=0.5, gt=0, lt=1)  # plateau
    patience: int = Field(default=3, ge=0, le=MAX_EPOCHS)  # plateau


class FinetuneConfig(StrictModel):
    """Optional training of the pruned grouped network after the search."""

    epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)
    lr: float | None = Field(default=None, gt=0)  # default: the search learning rate
    init: Literal["search", "scratch"] = "search"  # continue from the search weights, or fresh weights


class LocalSearchConfig(StrictModel):
    """Merges and single-task moves after the search, on validation loss (see :mod:`dmtg_nas.localsearch`)."""

    # auto: when the group networks train batched (in-memory data, vector tasks, encoders without
    # batch norm), where a round costs about a few single trainings; true: always (else one by one)
    enabled: bool | Literal["auto"] = False
    # when no merge wins, split single tasks off the groups merges formed (while fewer groups than K)
    splits: bool = False
    moves: bool = False  # also move single tasks between groups (default: merges only)
    merge_splits: bool = False  # also merge two groups leaving one of their tasks on its own
    confirm: bool = False  # check each step again on an independent training of the groups it changes
    margin: float = Field(default=0.01, ge=0, lt=1)  # accept a step only if val loss is lower by this fraction
    replicates: int = Field(default=1, ge=1, le=16)  # independent trainings per group network, scores averaged
    max_candidates: int = Field(default=12, ge=1, le=MAX_COUNT)  # neighbours tried per round
    rounds: int = Field(default=4, ge=1, le=MAX_COUNT)  # accepted steps at most


class WarmupConfig(StrictModel):
    """Warm start of the grouping logits (see :mod:`dmtg_nas.warmstart`)."""

    method: Literal["none", "attribution"] = "none"
    epochs: Epochs = 15  # single-task training epochs (at least min_steps steps)
    min_steps: int = Field(default=400, ge=0, le=MAX_COUNT)  # small data sets train more epochs to reach this
    batch_size: int | None = Field(default=None, ge=1, le=MAX_COUNT)  # None: the strategy's batch size
    rank: int = Field(default=4, ge=1, le=MAX_WIDTH)  # input-gradient subspace dimension
    samples: int = Field(default=2048, ge=8, le=MAX_COUNT)  # training inputs used for the attribution
    strength: float = Field(default=3.0, ge=0)  # added to each task's warm-start branch logit
    # number of clusters: "auto" as many as the affinity supports, in 2..K (branches beyond them start
    # free); "k" always cuts into K clusters
    clusters: Literal["auto", "k"] = "auto"
    # the single-task networks' encoder widths as a fraction of the spec's (mlp hidden widths,
    # convnet channels, celeba_resnet width; timm models keep theirs); "auto": 0.5 for the image
    # encoders that have widths (convnet, celeba_resnet), 1 otherwise (see warmstart.proxy_width)
    width: typing.Annotated[float, Field(gt=0, le=1)] | Literal["auto"] = "auto"


class InitConfig(StrictModel):
    """How the supernet starts."""

    branches: Literal["copy", "independent"] = "copy"  # copy: all K branches identical
    logits: float = 1.0  # initial value of every grouping logit (uniform distribution)


class TrainerConfig(StrictModel):
    """Where and how Lightning trains: every Trainer the package builds (the search, fine-tuning,
    retraining, the baselines and the warm start) takes these settings.

    ``batch_size`` stays the global batch: with ``devices * num_nodes`` processes each one gets its
    share of every batch, so a run on more devices takes the same optimisation steps.
    """

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"  # auto: a GPU when there is one
    devices: int = Field(default=1, ge=1)  # processes per node (GPUs, or CPU processes with accelerator cpu)
    num_nodes: int = Field(default=1, ge=1)
    strategy: Literal["auto", "ddp"] = "auto"  # auto: ddp when devices * num_nodes > 1
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"  # Lightning's precision plugin
    channels_last: bool = False  # conv encoders: NHWC memory format (faster convolutions on recent GPUs)
    compile: bool = False  # torch.compile the network's forward

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


class StrategyConfig(StrictModel):
    """How to search: the DMTG one-shot strategy's settings."""

    name: str = "dmtg"
    description: str = ""
    temperature: TemperatureConfig = Field(default_factory=TemperatureConfig)
    sample: Literal["soft", "hard"] = "soft"  # hard: straight-through one-hot samples
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    entropy_weight: float = Field(default=0.0, ge=0)  # + w * mean entropy of softmax(logits)
    epochs: Epochs = 100
    batch_size: int = Field(default=256, ge=1, le=MAX_BATCH)
    eval_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH)
    gradient_clip: float | None = Field(default=None, gt=0)  # max gradient norm (weights and logits together)
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss: stop the run, or skip the batch and count it
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    local_search: LocalSearchConfig = Field(default_factory=LocalSearchConfig)
    seed: Seed = 0
    deterministic: bool = False  # deterministic algorithms only (GPU runs; errors where PyTorch has none)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    # loader worker processes per training process; auto: none for in-memory data, a few for image files
    num_workers: typing.Annotated[int, Field(ge=0, le=256)] | Literal["auto"] = "auto"
    # older spelling of trainer.accelerator (cuda = gpu), still read from saved run configs
    device: Literal["auto", "cpu", "cuda"] | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _device(self) -> StrategyConfig:
        if self.device in (None, "auto"):
            self.device = None
            return self
        accelerator = "gpu" if self.device == "cuda" else self.device
        if "trainer" in self.model_fields_set and self.trainer.accelerator not in ("auto", accelerator):
            raise ValueError(
                f"device {self.device!r} contradicts trainer.accelerator {self.trainer.accelerator!r}; "
                "set only trainer.accelerator"
            )
        self.trainer = self.trainer.model_copy(update={"accelerator": accelerator})
        self.device = None
        return self


class SearchSpec(StrictModel):
    """A whole search: tasks, data, encoder, heads, K and strategy."""

    name: str = Field(min_length=1)
    description: str = ""
    tasks: list[TaskConfig] = Field(min_length=1)
    dataset: DatasetConfig
    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig(name="mlp"))
    heads: HeadsConfig = Field(default_factory=HeadsConfig)
    groups: int = Field(ge=1, le=64)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    # single-task (or any reference) results for normalized gain and Delta_m: metrics.json files
    reference: str | list[str] | None = None
    tuning: TuningConfig | None = None  # `dmtg tune` / `dmtg portal`: what to tune (TuningConfig)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        # the name becomes part of output folder names (runs/<name>-<time>) and study names
        if value.startswith(".") or value != value.strip() or re.search(r"[/\\\x00-\x1f\x7f]", value):
            raise ValueError(
                f"name {_show(value)} is used in folder names: no '/', '\\', control characters, "
                "leading '.' or surrounding spaces"
            )
        return value

    @model_validator(mode="after")
    def _unique_tasks(self) -> SearchSpec:
        seen: set[str] = set()
        for task in self.tasks:
            if task.name in seen:
                raise ValueError(f"duplicate task name {task.name!r}")
            seen.add(task.name)
        return self

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def to_dict(self) -> dict[str, Any]:
        """The resolved document, as plain YAML-able data."""
        return self.model_dump(mode="json")


class TuningConfig(StrictModel):
    """What ``dmtg tune`` (Optuna) and ``dmtg portal`` (NNI) tune: one DMTG search per trial.

    Ranges are ``[low, high]``, inclusive; learning rates and temperatures are sampled on a log
    scale. ``null`` for a range keeps the spec's own value (not tuned).
    """

    trials: int = Field(default=20, ge=1, le=MAX_COUNT)  # trials of the study in total (all workers together)
    groups: list[int] | None = None  # K range; default [2, min(N, 6)]
    tau_init: list[float] | None = Field(default_factory=lambda: [0.5, 5.0])
    tau_final: list[float] | None = Field(default_factory=lambda: [0.05, 1.0])  # not for 'constant'
    schedules: list[Schedule] = Field(default_factory=lambda: list(typing.get_args(Schedule)), min_length=1)
    lr: list[float] | None = Field(default_factory=lambda: [3e-4, 1e-2])
    logits_lr: list[float] | None = None
    epochs: Epochs | None = None  # search epochs per trial (default: strategy.epochs)
    branch_cost: float = Field(default=0.0, ge=0)  # score = val total loss + branch_cost * branches used
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    seed: Seed = 0
    # default: sqlite:///OUT/study.db; a *.log/*.jsonl path: journal file
    storage: str | None = Field(default=None, min_length=1)
    heartbeat: int = Field(default=60, ge=1, le=86_400)  # seconds; a worker silent 2x this long is dead (RDB storages)
    retries: int = Field(default=1, ge=0, le=1000)  # times a dead worker's trial is run again

    @model_validator(mode="after")
    def _ranges(self) -> TuningConfig:
        for name in ("groups", "tau_init", "tau_final", "lr", "logits_lr"):
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != 2 or not value[0] <= value[1]:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {value}")
            if value[0] <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.groups is not None and self.groups[1] > 64:
            raise ValueError(f"groups must be at most 64, got {self.groups}")
        return self


SearchSpec.model_rebuild()


# ----------------------------------------------------------------------------------------------
# Loading documents
# ----------------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read file: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"not a UTF-8 text file (byte {exc.start})", source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"invalid YAML{where}: {problem}", source=str(path)) from None
    except RecursionError:
        raise SpecError(f"the document nests deeper than {MAX_DOCUMENT_DEPTH} levels", source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"the document must be a mapping, got {type(data).__name__}", source=str(path))
    try:
        check_document(data)
    except SpecError as exc:
        raise exc.located(str(path)) from None
    return data


def check_document(doc: Any) -> None:
    """Reject documents no spec can be: more than :data:`MAX_DOCUMENT_NODES` values once YAML
    aliases are expanded (an "alias bomb"), deeper than :data:`MAX_DOCUMENT_DEPTH` levels, or
    holding NUL characters (which no file name or option can contain).

    Stops at the first problem, so its cost is bounded by the limits, not by the document.
    """
    count = 0
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        node, key, depth = stack.pop()
        count += 1
        if count > MAX_DOCUMENT_NODES:
            raise SpecError(f"the document expands to more than {MAX_DOCUMENT_NODES} values (YAML aliases?)")
        if depth > MAX_DOCUMENT_DEPTH:
            raise SpecError(f"nested deeper than {MAX_DOCUMENT_DEPTH} levels", key=key or None)
        if isinstance(node, str) and "\x00" in node:
            raise SpecError("contains a NUL character", key=key or None)
        if isinstance(node, Mapping):
            for k, v in node.items():
                if isinstance(k, str) and "\x00" in k:
                    raise SpecError("a key contains a NUL character", key=key or None)
                stack.append((v, _join(key, [str(k)]), depth + 1))
        elif isinstance(node, list):
            stack.extend((v, _join(key, [i]), depth + 1) for i, v in enumerate(node))


def _locate(ref: str, kind: PresetKind, relative_to: Path | None) -> Path:
    """Resolve a preset name or a path (absolute, relative to ``relative_to``, or to the CWD)."""
    candidates = []
    as_path = _expand_user(ref)
    if as_path.is_absolute():
        candidates.append(as_path)
    else:
        if relative_to is not None:
            candidates.append(relative_to / as_path)
        candidates.append(Path.cwd() / as_path)
    for cand in candidates:
        try:
            if cand.is_file():
                return cand.resolve()
        except (OSError, ValueError) as exc:  # a name the file system refuses (too long, NUL)
            reason = getattr(exc, "strerror", None) or exc
            raise SpecError(f"cannot use {_show(ref)} as a file name: {reason}") from None
    preset = find_preset(kind, ref)
    if preset is not None:
        return preset
    names = list_presets(kind)
    label = "search space" if kind == "search_spaces" else "strategy preset"
    folder = next((c for c in candidates if c.is_dir()), None)
    what = (
        f"{folder} is a folder, not a YAML file, and there is no shipped {label} of that name"
        if folder
        else (f"no file or shipped {label} named {_show(ref)}{suggest(ref, names)}")
    )
    raise SpecError(f"{what}; shipped: {allowed(names)}")


def _deep_merge(base: dict[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_document(
    ref: str | Path, kind: PresetKind, *, relative_to: Path | None = None, _chain: tuple[Path, ...] = ()
) -> tuple[dict[str, Any], Path]:
    """Load a YAML document by preset name or path and apply its ``_base_`` chain.

    ``_base_`` is a name/path or a list of them, merged left to right, then the document on top.
    Relative ``_base_`` paths are resolved against the document's folder.
    """
    path = _locate(str(ref), kind, relative_to)
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise SpecError(f"_base_ inheritance cycle: {cycle}", source=str(path))
    doc = _read_yaml(path)
    return _apply_base(doc, kind, path.parent, (*_chain, path), source=str(path)), path


def _apply_base(
    doc: dict[str, Any], kind: PresetKind, folder: Path | None, chain: tuple[Path, ...], source: str
) -> dict[str, Any]:
    bases = doc.pop("_base_", None)
    if bases is None:
        return doc
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise SpecError("must be a file name or a list of file names", source=source, key="_base_")
    merged: dict[str, Any] = {}
    for base in bases:
        try:
            base_doc, _ = resolve_document(base, kind, relative_to=folder, _chain=chain)
        except SpecError as exc:
            raise exc.located(source, "_base_") from None
        merged = _deep_merge(merged, base_doc)
    return _deep_merge(merged, doc)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``"a.b=value"``; the value is parsed as YAML (``4`` -> int, ``[a, b]`` -> list)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"override {item!r} must look like 'dotted.key=value'", source="--set")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key, value


def _set_dotted(doc: dict[str, Any], key: str, value: Any) -> None:
    node: Any = doc
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, ".".join(parts[: i + 1]))
            continue
        if not isinstance(node, dict):
            raise SpecError(f"cannot set {key!r}: {'.'.join(parts[:i])!r} is not a mapping", source="--set")
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        index = int(last) if last.isdigit() else -1
        if not 0 <= index < len(node):
            raise SpecError(f"cannot set {key!r}: no list item {last!r}", source="--set")
        node[index] = value
    else:
        node[last] = value


def _list_item(node: list[Any], part: str, path: str) -> Any:
    if not part.isdigit() or int(part) >= len(node):
        raise SpecError(f"{path!r}: no list item {part!r} (the list has {len(node)} items)", source="--set")
    return node[int(part)]


def _expand_strategy(doc: dict[str, Any], folder: Path | None, source: str) -> None:
    """Replace a strategy name/path by its document; apply ``_base_`` of an inline mapping."""
    strat = doc.get("strategy", "dmtg")
    if isinstance(strat, str):
        try:
            loaded, path = resolve_document(strat, "strategies", relative_to=folder)
        except SpecError as exc:
            raise SpecError(exc.message, source=exc.source or source, key="strategy") from None
        loaded.setdefault("name", path.stem)
        doc["strategy"] = loaded
    elif isinstance(strat, dict) and "_base_" in strat:
        doc["strategy"] = _apply_base(strat, "strategies", folder, (), source)


_PATH_KEYS = ("path", "root", "cache")


def _expand_user(value: str) -> Path:
    """``~`` and ``~user`` expanded; left as is when that user has no home folder."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        return Path(value)


def _absolute(value: Any, folder: Path) -> Any:
    if isinstance(value, str) and value and not _expand_user(value).is_absolute():
        return str((folder / value).resolve())
    if isinstance(value, str) and value:
        return str(_expand_user(value))
    return value


def _resolve_paths(doc: dict[str, Any], folder: Path) -> None:
    """Make relative file names absolute against the spec's folder: the data set's
    ``path``/``root``/``cache``, the backbone's ``pretrained`` weights and ``reference`` files."""
    dataset = doc.get("dataset")
    if isinstance(dataset, dict):
        for key in _PATH_KEYS:
            if key in dataset:
                dataset[key] = _absolute(dataset[key], folder)
    backbone = doc.get("backbone")
    if isinstance(backbone, dict) and isinstance(backbone.get("pretrained"), str):
        backbone["pretrained"] = _absolute(backbone["pretrained"], folder)
    ref = doc.get("reference")
    if isinstance(ref, str):
        doc["reference"] = _absolute(ref, folder)
    elif isinstance(ref, list):
        doc["reference"] = [_absolute(r, folder) for r in ref]


def load_spec(spec: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> SearchSpec:
    """Load and validate a search-space spec.

    Args:
        spec: a shipped search-space name (``"planted"``), a YAML path, or a mapping.
        overrides: ``"dotted.key=value"`` strings applied to the merged document.

    Raises:
        SpecError: the spec, a file it names or an override is invalid.
    """
    if isinstance(spec, Mapping):
        try:
            check_document(spec)
        except SpecError as exc:
            raise exc.located("<spec>") from None
        doc = copy.deepcopy(dict(spec))
        folder: Path | None = None
        source = "<spec>"
        doc = _apply_base(doc, "search_spaces", None, (), source)
    else:
        doc, path = resolve_document(spec, "search_spaces")
        folder = path.parent
        source = str(path)
        _resolve_paths(doc, folder)
    _expand_strategy(doc, folder, source)
    overridden: list[str] = []
    for item in overrides:
        key, value = parse_override(item)
        try:
            check_document(value)
        except SpecError as exc:
            raise SpecError(exc.message, source="--set", key=key) from None
        if key == "strategy" or key.startswith("strategy."):
            _expand_strategy(doc, folder, source)
        _set_dotted(doc, key, value)
        if key == "strategy":
            _expand_strategy(doc, Path.cwd(), "--set")
        if key in (*(f"dataset.{k}" for k in _PATH_KEYS), "backbone.pretrained") and isinstance(value, str) and value:
            _set_dotted(doc, key, str(_expand_user(value).resolve()))
        if key == "reference":
            ref = doc["reference"]
            doc["reference"] = (
                [_absolute(r, Path.cwd()) for r in ref] if isinstance(ref, list) else _absolute(ref, Path.cwd())
            )
        overridden.append(key)
    try:
        check_document(doc)
    except SpecError as exc:
        raise SpecError(exc.message, source="--set" if overridden else source, key=exc.key) from None
    _user_tasks(doc)
    try:
        result = validate_model(SearchSpec, doc)
        from .components import validate_components

        validate_components(result)
    except SpecError as exc:
        key = re.sub(r"\[(\d+)\]", r".\1", exc.key or "")
        from_set = any(key == k or key.startswith(k + ".") for k in overridden)
        raise SpecError(exc.message, source="--set" if from_set else source, key=exc.key) from None
    return result


def _user_tasks(doc: dict[str, Any]) -> None:
    """A spec on user data (``dataset.name: module:function``) may omit ``tasks``: take the
    function's task definitions."""
    dataset = doc.get("dataset")
    if "tasks" in doc or not isinstance(dataset, dict):
        return
    name = dataset.get("name")
    if isinstance(name, str) and ":" in name:
        from .data.user import user_tasks

        options = {k: v for k, v in dataset.items() if k != "name"}
        doc["tasks"] = user_tasks(name, options)


def load_strategy(ref: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> StrategyConfig:
    """Load and validate a strategy preset (name, path or mapping), with optional overrides."""
    if isinstance(ref, Mapping):
        doc = _apply_base(copy.deepcopy(dict(ref)), "strategies", None, (), "<strategy>")
        source = "<strategy>"
    else:
        doc, path = resolve_document(ref, "strategies")
        doc.setdefault("name", path.stem)
        source = str(path)
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(doc, key, value)
    try:
        return validate_model(StrategyConfig, doc)
    except SpecError as exc:
        raise exc.located(source) from None


# ----------------------------------------------------------------------------------------------
# Validation with readable errors
# ----------------------------------------------------------------------------------------------

M = typing.TypeVar("M", bound=BaseModel)


def validate_model(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate ``data`` against ``model``; raise one :class:`SpecError` for the first problem."""
    if isinstance(data, Mapping):
        _check_keys(model, data, prefix)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _to_spec_error(exc, prefix) from None


def _join(prefix: str, loc: Sequence[Any]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model class, is_list) when ``annotation`` is a model or a list/optional of one."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin in (list, Sequence):
        inner, _ = _submodel(typing.get_args(annotation)[0])
        return inner, True
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner, is_list = _submodel(arg)
            if inner is not None:
                return inner, is_list
    return None, False


def _check_keys(model: type[BaseModel], data: Mapping[str, Any], prefix: str) -> None:
    """Reject unknown keys with the allowed ones and a "did you mean"; recurse into sections."""
    fields = model.model_fields
    if model.model_config.get("extra") == "forbid":
        for key in data:
            if key not in fields:
                names = list(fields)
                raise SpecError(
                    f"unknown key {key!r}{suggest(str(key), names)}; allowed: {', '.join(names)}",
                    key=_join(prefix, [key]),
                )
    for name, field in fields.items():
        if name not in data:
            continue
        sub, is_list = _submodel(field.annotation)
        if sub is None:
            continue
        value = data[name]
        if is_list:  # a mapping where a list belongs is a type error, reported by pydantic
            for i, item in enumerate(value if isinstance(value, list) else []):
                if isinstance(item, Mapping):
                    _check_keys(sub, item, _join(prefix, [name, i]))
        elif isinstance(value, Mapping):
            _check_keys(sub, value, _join(prefix, [name]))


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _error_location(err: Any) -> list[Any]:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-")))]
    # drop pydantic's union branch names such as 'int' / 'float' / 'list[...]'
    return [
        p
        for p in loc
        if not (
            isinstance(p, str)
            and ("[" in p or p in {"int", "float", "str", "none", "constrained-int", "constrained-float"})
        )
    ]


def _to_spec_error(exc: pydantic.ValidationError, prefix: str) -> SpecError:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = _error_location(err)
    key = _join(prefix, loc) or None
    etype = err["type"]
    value = err.get("input")
    shown = _show(value)
    if etype == "missing":
        message = "missing required key"
    elif etype == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
        message = f"bad value {shown}{suggest(str(value), choices)}; allowed: {expected}"
    elif etype in _TYPE_NAMES:
        # a union with named values (``int | Literal["auto"]``): each branch reports its own error
        named = [
            e["ctx"]["expected"]
            for e in errors[1:]
            if e["type"] == "literal_error" and "expected" in e.get("ctx", {}) and _error_location(e) == loc
        ]
        expected = " or ".join([_TYPE_NAMES[etype], *named])
        message = f"expected {expected}, got {shown} ({type(value).__name__})"
    elif etype == "value_error":
        message = str(err["msg"]).removeprefix("Value error, ")
    else:
        message = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {shown}"
    return SpecError(message, key=key)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
