"""The spec's sections as pydantic models: tasks, data set, encoder, heads, K (``branches``),
strategy, tuning.

Every model rejects unknown keys, does not coerce types and refuses non-finite floats; the
comment next to a field says what it means. Loading documents (YAML, ``_base_``, ``--set``) is
:mod:`dmtg_nas.config`; turning the named data set and encoder into objects is the layer above
(:mod:`dmtg_nas.components`). Nothing here imports torch.
"""

from __future__ import annotations

import logging
import re
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import allowed, suggest
from .validation import show_value

__all__ = [
    "DENSE_TYPES",
    "EVAL_METRICS",
    "HIGHER_IS_BETTER",
    "PRIMARY_METRIC",
    "MAX_BATCH",
    "MAX_COUNT",
    "MAX_DOCUMENT_DEPTH",
    "MAX_DOCUMENT_NODES",
    "MAX_EPOCHS",
    "MAX_NAME_BYTES",
    "MAX_SEED",
    "MAX_WIDTH",
    "TASK_LOSSES",
    "Epochs",
    "Schedule",
    "Seed",
    "TaskType",
    "Width",
    "StrictModel",
    "TaskConfig",
    "SplitConfig",
    "DatasetConfig",
    "BackboneConfig",
    "HeadsConfig",
    "TemperatureConfig",
    "OptimizerConfig",
    "LRScheduleConfig",
    "FinetuneConfig",
    "StopWhenDecidedConfig",
    "LocalSearchConfig",
    "AffinityConfig",
    "InitConfig",
    "WarmupConfig",
    "TrainerConfig",
    "StrategyConfig",
    "SearchSpec",
    "TuningConfig",
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

# Task types' evaluation metrics (no torch: the spec layer and reference files read them).
HIGHER_IS_BETTER = {"accuracy", "miou", "pixel_accuracy", "within_11.25", "within_22.5", "within_30", "f1"}

# The metrics each type is judged by (Delta_m averages over these; ``accuracy`` is left out where
# ``error`` says the same) and the one metric used for the normalized gain.
EVAL_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("mse", "mae"),
    "binary": ("error",),
    "multiclass": ("error",),
    "segmentation": ("miou", "pixel_accuracy"),
    "depth": ("rmse", "abs_rel"),
    "normals": ("angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30"),
    "keypoints": ("mae", "f1"),
    "edges": ("mae", "f1"),
}
PRIMARY_METRIC = {
    "regression": "mse",
    "binary": "error",
    "multiclass": "error",
    "segmentation": "miou",
    "depth": "abs_rel",
    "normals": "angle_mean",
    "keypoints": "mae",
    "edges": "mae",
}

# Upper bounds of numbers that size something. They are far above any real setting and keep every
# value within what torch, numpy and the random generators accept (1e30 epochs is a typo, not a plan).
MAX_SEED = 2**31 - 1
MAX_EPOCHS = 1_000_000
MAX_WIDTH = 65_536  # layer widths, channels, head sizes
MAX_BATCH = 1_048_576
MAX_COUNT = 1_000_000_000  # samples, steps, limits
# a spec's name becomes part of folder names (runs/portal-<name>-<time>): far below the 255 bytes a
# file system allows in one name
MAX_NAME_BYTES = 100
Seed = typing.Annotated[int, Field(ge=0, le=MAX_SEED)]
Width = typing.Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Epochs = typing.Annotated[int, Field(ge=1, le=MAX_EPOCHS)]

# A spec document may not expand (through YAML anchors and aliases) beyond this many values, nor
# nest deeper than this: real specs hold a few hundred values, a handful of levels deep.
MAX_DOCUMENT_NODES = 200_000
MAX_DOCUMENT_DEPTH = 32


# characters no name that becomes a folder name or an NNI label may hold: path separators and
# control characters (which would also garble the terminal)
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


def unsafe_name(value: str) -> bool:
    """True when ``value`` holds a '/', a '\\' or a control character: it could not be a folder
    name, an NNI label (NNI splits labels at '/') or a clean line of output."""
    return _UNSAFE_CHARS.search(value) is not None


_logger = logging.getLogger(__name__)
_RENAMED: set[str] = set()  # old key names already warned about (once per process)


def renamed_key(doc: dict[str, Any], old: str, new: str, where: str = "") -> None:
    """Read the old key ``old`` of ``doc`` as ``new`` (in place), with a deprecation notice on stderr
    once per process; both given is an error."""
    if old not in doc:
        return
    if new in doc:
        raise ValueError(f"give {where}{new} only ({where}{old} is its old name)")
    doc[new] = doc.pop(old)
    if where + old not in _RENAMED:
        _RENAMED.add(where + old)
        _logger.warning("%s%s is deprecated: call it %s%s (the number of branches, K)", where, old, where, new)


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

    @field_validator("name")
    @classmethod
    def _label(cls, value: str) -> str:
        # the name labels the task's NNI choice (no '/') and appears in outputs and messages
        if unsafe_name(value) or value in (".", ".."):
            raise ValueError(
                f"task name {show_value(value)} is used as an NNI label: no '/', '\\', control characters, '.' or '..'"
            )
        return value

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
    """Random train/validation/test split (for data sets without a fixed partition). Neither part may
    be empty: the search selects on validation and reports test results."""

    val: float = Field(default=0.1, gt=0, lt=1)
    test: float = Field(default=0.1, gt=0, lt=1)
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
    # plateau: the loss it watches: the validation loss, or the epoch's mean training loss (DMTG's code)
    monitor: Literal["val_loss", "train_loss"] = "val_loss"
    min_lr: float = Field(default=0.0, ge=0)  # plateau: the learning rate never goes below this
    # plateau: a loss counts as lower when below best * (1 - threshold) (PyTorch's relative mode)
    threshold: float = Field(default=1e-4, ge=0, lt=1)

    @property
    def reads_val_loss(self) -> bool:
        """Whether the schedule steps on the validation loss (plateau on ``val_loss``)."""
        return self.name == "plateau" and self.monitor == "val_loss"


class FinetuneConfig(StrictModel):
    """Optional training of the pruned grouped network after the search."""

    epochs: int = Field(default=0, ge=0, le=MAX_EPOCHS)
    lr: float | None = Field(default=None, gt=0)  # default: the search learning rate
    init: Literal["search", "scratch"] = "search"  # continue from the search weights, or fresh weights
    # auto: not where the merge check runs; its group networks, each trained from scratch with the
    # whole budget (the supernet's epochs and these), are then the final model
    enabled: bool | Literal["auto"] = True


class StopWhenDecidedConfig(StrictModel):
    """End the supernet's training once the grouping is decided (see
    :func:`dmtg_nas.pipeline.search.decided`); the epochs it did not use go to the fine-tune."""

    # auto: where the merge check's group networks train batched (in-memory vector data, an encoder
    # without batch norm), where the K*N heads make a supernet epoch cost more than a pruned one's
    enabled: bool | Literal["auto"] = False
    # decided: for `patience` epochs every task's most probable branch unchanged, its probability not
    # lower than `patience` epochs before, and at least twice the next branch's
    patience: int = Field(default=5, ge=1, le=MAX_EPOCHS)


class LocalSearchConfig(StrictModel):
    """Merges and single-task moves after the search, on validation loss (see :mod:`dmtg_nas.localsearch`)."""

    # auto: when the group networks train batched (in-memory data, vector tasks, encoders without
    # batch norm), where a round costs about a few single trainings; true: always (else one by one)
    enabled: bool | Literal["auto"] = False
    # when no merge wins, split single tasks off the groups merges formed (while fewer groups than K)
    splits: bool = False
    moves: bool = False  # also move single tasks between groups (default: merges only)
    merge_splits: bool = False  # also merge two groups leaving one of their tasks on its own
    group_splits: bool = False  # also cut a group of four or more tasks in two (while fewer groups than K)
    swaps: bool = False  # also exchange a task of one group with a task of another
    confirm: bool = False  # check each step again on an independent training of the groups it changes
    margin: float = Field(default=0.01, ge=0, lt=1)  # accept a step only if val loss is lower by this fraction
    replicates: int = Field(default=1, ge=1, le=16)  # independent trainings per group network, scores averaged
    max_candidates: int = Field(default=12, ge=1, le=MAX_COUNT)  # neighbours tried per round
    rounds: int = Field(default=8, ge=1, le=MAX_COUNT)  # accepted steps at most
    # a time budget for the whole run, as a multiple of K trainings of one all-task network (timed on
    # this machine by a short probe): the check tries only the candidates that fit in what is left
    # and stops when none does (its start's group networks always train); None: no budget
    budget: float | None = Field(default=None, gt=0)


class WarmupConfig(StrictModel):
    """Warm start of the grouping logits (see :mod:`dmtg_nas.warmstart`)."""

    # "auto": attribution where the merge check's networks train batched (in-memory vector data, an
    # encoder without batch-norm statistics), none elsewhere (see warmstart.warm_start_method)
    method: Literal["none", "attribution", "auto"] = "none"
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


class AffinityConfig(StrictModel):
    """The affinity scout: the supernet's first epochs with the logits held, then its tasks' affinity
    (attribution or lookahead) and the logits restarted from its clusters (:mod:`dmtg_nas.engine.scout`)."""

    enabled: bool = False
    # attribution: the warm start's input-subspace affinity of the supernet's expected predictions;
    # lookahead: TAG's lookahead affinity on the first branch, averaged over the scout's steps
    method: Literal["attribution", "lookahead"] = "attribution"
    every: int = Field(default=1, ge=1, le=MAX_COUNT)  # lookahead: measured every this many steps
    epochs: Epochs = 5  # the supernet's first epochs, logits held, every task on every branch
    rank: int = Field(default=4, ge=1, le=MAX_WIDTH)  # input-gradient subspace dimension
    samples: int = Field(default=2048, ge=8, le=MAX_COUNT)  # training inputs used for the attribution
    strength: float = Field(default=3.0, ge=0)  # added to each task's cluster logit after the scout
    # "auto": as many clusters as the affinity supports, in 2..K; "k": always K
    clusters: Literal["auto", "k"] = "auto"


class AlignmentConfig(StrictModel):
    """Gradient alignment: the logits follow how well each task's loss gradient on a branch's own
    parameters agrees with the gradients of the tasks the branch carries
    (:meth:`dmtg_nas.nni.oneshot.DMTGLightningModule.alignment_energy`)."""

    enabled: bool = False
    every: int = Field(default=5, ge=1, le=MAX_COUNT)  # measured every this many steps
    samples: int = Field(default=64, ge=2, le=MAX_COUNT)  # rows of the step's batch the gradients use
    weight: float = Field(default=1.0, gt=0)  # of the alignment term in the logits' loss
    ema: float = Field(default=0.8, ge=0, lt=1)  # the similarity is a running average over measurements
    # alignment: the logits learn only from the alignment (the head losses train the weights);
    # both: also from the sample-weighted head losses, as in the method
    drive: Literal["alignment", "both"] = "alignment"


class InitConfig(StrictModel):
    """How the supernet starts."""

    branches: Literal["copy", "independent"] = "copy"  # copy: all K branches identical
    logits: float = 1.0  # initial value of every grouping logit (uniform distribution)
    # a starting grouping (at most K groups of task names; group g starts on branch g, unlisted tasks
    # uniform): its logits get + strength; it replaces the warm start's clusters as the start
    groups: list[list[str]] | None = None
    strength: float = Field(default=3.0, ge=0)
    # the weights of every network built: default (PyTorch's and timm's own initialisation) or xavier
    # (xavier_uniform_ on convolution and linear weights, zero biases: DMTG's CelebA code)
    weights: Literal["default", "xavier"] = "default"


# Trainer arguments the package sets itself, and the spec key that sets them ("" where none does):
# ``strategy.trainer.extra`` may not give them
TRAINER_SETTINGS = {
    "max_epochs": "strategy.epochs",
    "gradient_clip_val": "strategy.gradient_clip",
    "deterministic": "strategy.deterministic",
    "accelerator": "strategy.trainer.accelerator",
    "devices": "strategy.trainer.devices",
    "num_nodes": "strategy.trainer.num_nodes",
    "strategy": "strategy.trainer.strategy",
    "precision": "strategy.trainer.precision",
    "sync_batchnorm": "strategy.trainer.sync_batchnorm",
    "logger": "strategy.trainer.logger",
    "callbacks": "strategy.trainer.callbacks",
    "enable_progress_bar": "--quiet",
    **dict.fromkeys(
        (
            "enable_checkpointing",
            "enable_model_summary",
            "num_sanity_val_steps",
            "limit_val_batches",
            "log_every_n_steps",
            "plugins",
            "default_root_dir",
            "use_distributed_sampler",
        ),
        "",
    ),
}


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
    compile: bool = False  # torch.compile the network's forward and the method's loss
    # DDP: batch-norm statistics over the whole global batch (SyncBatchNorm) instead of each process's
    # share; auto: on when more than one process trains on GPUs (SyncBatchNorm does not run on the CPU)
    sync_batchnorm: Literal["auto"] | bool = "auto"
    # the search's logger, writing under the output folder only: csv (logs/metrics.csv), tensorboard,
    # mlflow (a local file store, OUT/mlruns) or wandb (offline mode); each needs its package
    logger: Literal["csv", "tensorboard", "mlflow", "wandb"] = "csv"
    # more Lightning Trainer keyword arguments (checked against pl.Trainer's own)
    extra: dict[str, Any] = Field(default_factory=dict)
    # Lightning callbacks by import path: "package.module:Class", or {name: "package.module:Class", **kwargs}
    callbacks: list[str | dict[str, Any]] = Field(default_factory=list)

    @field_validator("extra")
    @classmethod
    def _not_ours(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in TRAINER_SETTINGS:
                where = TRAINER_SETTINGS[key]
                raise ValueError(f"{key!r} is set by the package{f': use {where}' if where else ''}")
        return value

    @field_validator("callbacks")
    @classmethod
    def _callback_paths(cls, value: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
        for i, item in enumerate(value):
            path = item if isinstance(item, str) else item.get("name")
            if not isinstance(path, str) or ":" not in path:
                raise ValueError(
                    f"callbacks[{i}] must be 'package.module:Class' or {{name: 'package.module:Class', ...keyword "
                    f"arguments}}, got {show_value(item)}"
                )
        return value

    @model_validator(mode="after")
    def _sync_batchnorm_on_gpus(self) -> TrainerConfig:
        if self.sync_batchnorm is True and self.accelerator == "cpu":
            raise ValueError(
                "sync_batchnorm: true needs GPUs (SyncBatchNorm does not run on the CPU); use auto or false"
            )
        return self

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
    affinity: AffinityConfig = Field(default_factory=AffinityConfig)
    alignment: AlignmentConfig = Field(default_factory=AlignmentConfig)
    # after the search: discrete moves of tasks (and merges of groups) from the relaxation's argmax
    # that raise the grouping's within-group affinity (the warm start's or the scout's)
    polish: bool = False
    # the logits' gradient from the next validation batch (network in evaluation mode), the weights'
    # from the training batch (first-order bilevel, as DARTS); false: both from the training batch
    bilevel: bool = False
    # false (an ablation): no supernet; the warm start's clusters (or init.groups) are the grouping the
    # fine-tune and the merge check start from
    supernet: bool = True
    entropy_weight: float = Field(default=0.0, ge=0)  # + w * mean entropy of softmax(logits)
    epochs: Epochs = 100
    # end the supernet once the grouping is decided; its unused epochs go to the fine-tune
    stop_when_decided: StopWhenDecidedConfig = Field(default_factory=StopWhenDecidedConfig)
    batch_size: int = Field(default=256, ge=1, le=MAX_BATCH)
    eval_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH)
    gradient_clip: float | None = Field(default=None, gt=0)  # max gradient norm (weights and logits together)
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss: stop the run, or skip the batch and count it
    # the search's result: the supernet as the last epoch left it, or as it was after the epoch with the
    # best validation total error (classification tasks only) or else validation loss (DMTG's code)
    keep: Literal["last", "best"] = "last"
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    local_search: LocalSearchConfig = Field(default_factory=LocalSearchConfig)
    seed: Seed = 0
    deterministic: bool = False  # deterministic algorithms only (GPU runs; errors where PyTorch has none)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    # loader worker processes per training process; auto: none for in-memory data, a few for image files
    num_workers: typing.Annotated[int, Field(ge=0, le=256)] | Literal["auto"] = "auto"
    # older spelling of trainer.accelerator (cuda = gpu), still read from saved run configs
    device: Literal["auto", "cpu", "cuda"] | None = Field(default=None, exclude=True)

    @property
    def validates(self) -> bool:
        """Whether the search needs a validation pass after every epoch whatever else reads it: the
        plateau schedule on the validation loss, or ``keep: best``."""
        return self.lr_schedule.reads_val_loss or self.keep == "best"

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
    branches: int = Field(ge=1, le=64)  # K: branches the tasks are grouped onto (at most K groups found)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    # single-task (or any reference) results for normalized gain and Delta_m: metrics.json files
    reference: str | list[str] | None = None
    tuning: TuningConfig | None = None  # `dmtg tune` / `dmtg portal`: what to tune (TuningConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        # ``groups`` was K's name; it is still read (outputs call the found groups ``groups``)
        if isinstance(data, dict) and "groups" in data:
            data = dict(data)
            renamed_key(data, "groups", "branches")
        return data

    @property
    def groups(self) -> int:
        """K under its old name (:attr:`branches`)."""
        return self.branches

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        # the name becomes part of output folder names (runs/<name>-<time>) and study names
        if value.startswith(".") or value != value.strip() or unsafe_name(value):
            raise ValueError(
                f"name {show_value(value)} is used in folder names: no '/', '\\', control characters, "
                "leading '.' or surrounding spaces"
            )
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise ValueError(
                f"name {show_value(value)} is {size} bytes long (UTF-8), at most {MAX_NAME_BYTES}: it is used in "
                "folder names (runs/<name>-<time>)"
            )
        return value

    @model_validator(mode="after")
    def _unique_tasks(self) -> SearchSpec:
        seen: set[str] = set()
        for task in self.tasks:
            if task.name in seen:
                raise ValueError(f"duplicate task name {task.name!r}")
            seen.add(task.name)
        start = self.strategy.init.groups
        if start is not None:
            if len(start) > self.groups:
                raise ValueError(f"strategy.init.groups has {len(start)} groups for {self.branches} branches")
            listed: set[str] = set()
            for group in start:
                for name in group:
                    if name not in seen:
                        raise ValueError(
                            f"strategy.init.groups names {name!r}, which is not a task{suggest(name, seen)}"
                        )
                    if name in listed:
                        raise ValueError(f"strategy.init.groups lists task {name!r} twice")
                    listed.add(name)
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
    branches: list[int] | None = None  # K range; default [2, min(N, 6)]
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

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and "groups" in data:
            data = dict(data)
            renamed_key(data, "groups", "branches", "tuning.")
        return data

    @model_validator(mode="after")
    def _ranges(self) -> TuningConfig:
        for name in ("branches", "tau_init", "tau_final", "lr", "logits_lr"):
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != 2 or not value[0] <= value[1]:
                raise ValueError(f"{name} must be [low, high] with low <= high, got {value}")
            if value[0] <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.branches is not None and self.branches[1] > 64:
            raise ValueError(f"branches must be at most 64, got {self.branches}")
        return self


SearchSpec.model_rebuild()
