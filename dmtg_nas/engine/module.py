"""The multi-task Lightning module every training here uses: losses, validation metrics, optimizer
and learning-rate schedule.

:class:`MultiTaskModule` trains any network whose forward returns ``{task: prediction}`` (a plain
network: :func:`~dmtg_nas.engine.losses.multitask_loss`), or, given the loss of a search method
(``training_step(..., loss_fn=...)``), a supernet returning
:class:`~dmtg_nas.engine.losses.HeadOutputs`; validation then scores each task's chosen heads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn

from ..errors import NonFiniteLossError
from ..schema import LRScheduleConfig, OptimizerConfig, TaskConfig
from ..tasks import TaskMetrics, summarize
from .losses import HeadOutputs, multitask_loss

__all__ = ["ARCH_PARAM_FLAG", "BestEpoch", "LossFn", "MultiTaskModule", "make_optimizer"]

# parameters with this attribute set are the search's architecture parameters (the grouping logits)
ARCH_PARAM_FLAG = "_dmtg_grouping_logit"

# (outputs, targets) -> (total loss, {task: its loss})
LossFn = Callable[[Any, Mapping[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]

_logger = logging.getLogger(__name__)


def _fused_adam_ok(params: Sequence[Tensor]) -> bool:
    """Whether torch's fused Adam/AdamW kernels take ``params``: torch 2.4 or later (the first with
    them on CPU), floating-point tensors on CPU or CUDA."""
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


class _CpuStepCheck:
    """Adam/AdamW without torch's per-step graph-capture check when every parameter is on the CPU.

    torch runs that check (``_accelerator_graph_capture_health_check``) in every ``step()``; on a CPU
    machine with a CUDA build of torch under Lightning (which sets ``PYTORCH_NVML_BASED_CUDA_CHECK``)
    it looks for a GPU through NVML each time, which is not cached while CUDA is uninitialised: some
    0.3 ms per step, as much as a whole small-network step. CUDA and XPU graphs cannot hold CPU
    tensors, so the check has nothing to find there; with any parameter elsewhere it runs as before.
    """

    param_groups: list[dict[str, Any]]

    def _accelerator_graph_capture_health_check(self) -> None:
        if all(p.device.type == "cpu" for group in self.param_groups for p in group["params"]):
            return
        super()._accelerator_graph_capture_health_check()  # type: ignore[misc]


class _Adam(_CpuStepCheck, torch.optim.Adam):
    pass


class _AdamW(_CpuStepCheck, torch.optim.AdamW):
    pass


def make_optimizer(params: Iterable[Any], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The configured optimizer over ``params`` (tensors or parameter groups).

    Adam and AdamW use torch's fused kernels where they take the parameters (see
    :func:`_fused_adam_ok`), else, like SGD, the multi-tensor (``foreach``) implementation, which torch
    does not pick by itself on CPU: its default there is a Python loop over the tensors, slow with
    many small tensors (the supernet's N logit rows, heads with hidden layers). The updates are the
    same up to float rounding (foreach: bitwise). On the CPU, Adam and AdamW skip torch's per-step GPU
    lookup (see :class:`_CpuStepCheck`).
    """
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    fused = _fused_adam_ok(tensors)
    if cfg.name == "adam":
        return _Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused, foreach=not fused)
    if cfg.name == "adamw":
        return _AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused, foreach=not fused)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, foreach=True)


class MultiTaskModule(pl.LightningModule):
    """Lightning module for multi-task training: losses, validation metrics, optimizer and schedule.

    The grouping logits (parameters flagged with :data:`ARCH_PARAM_FLAG`) share the one optimizer
    with the weights, in their own parameter group (own learning rate if ``optimizer.logits_lr``
    is set; no weight decay). Validation logs ``val_loss`` (the sum of task losses of the network as
    it would be pruned now) and per-task ``val/<task>/<metric>``.
    """

    def __init__(
        self,
        tasks: Sequence[TaskConfig],
        optimizer: OptimizerConfig,
        lr_schedule: LRScheduleConfig,
        epochs: int,
        nonfinite: str = "stop",
        *,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"nonfinite must be 'stop' or 'skip', got {nonfinite!r}")
        self.tasks = list(tasks)
        self.nonfinite = nonfinite
        self.nonfinite_skips: list[dict[str, Any]] = []  # {step, epoch, tasks} of each skipped batch
        # policy stop: (step, epoch) of the first non-finite loss ((-1, -1): none) and its task losses,
        # kept on the device and read at the epoch's end (check_finite): no host synchronisation per step
        self._bad_step: Tensor | None = None
        self._bad_epoch: Tensor | None = None
        self._bad_values: Tensor | None = None
        self._bad_names: list[str] = []
        self.optimizer_config = optimizer
        self.lr_schedule_config = lr_schedule
        self.epochs = epochs
        self.channels_last = channels_last
        self.compile_model = compile
        self.val_metrics = TaskMetrics(self.tasks)
        self.last_validation: dict[str, dict[str, float]] = {}
        # this epoch's sum of loss * batch size and its sample count, logged at the epoch's end
        self._loss_sum: Tensor | None = None
        self._loss_count = 0

    @property
    def model(self) -> nn.Module:
        """The network being trained (set by :meth:`set_model`)."""
        model = getattr(self, "_model", None)
        if model is None:
            raise RuntimeError("no model set: call set_model() first")
        return model  # type: ignore[no-any-return]

    def set_model(self, model: nn.Module) -> None:
        """Train ``model``; with ``channels_last`` its convolution weights switch to NHWC, with
        ``compile`` its forward runs through ``torch.compile`` (the module itself, its parameter names
        and checkpoints stay as they are)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._model = model
        # kept out of the module tree: the compiled wrapper would add a second name for every weight
        self.__dict__["_compiled"] = torch.compile(model) if self.compile_model else None

    def forward(self, x: Tensor) -> Any:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        compiled = self.__dict__.get("_compiled")
        return compiled(x) if compiled is not None else self.model(x)

    def on_fit_end(self) -> None:
        if self.channels_last:  # hand back an ordinary (NCHW) network
            self.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

    def training_step(self, batch: Any, batch_idx: int, loss_fn: LossFn | None = None) -> Tensor | None:
        """One step's loss: ``loss_fn(outputs, targets)`` (a search method's loss), by default
        :func:`~dmtg_nas.engine.losses.multitask_loss`."""
        x, targets = batch
        outputs = self(x)
        if loss_fn is None:
            total, parts = multitask_loss(self.tasks, outputs, targets)
        else:
            total, parts = loss_fn(outputs, targets)
        if self.nonfinite == "skip":
            # skipping the update needs the answer now: one synchronisation per step (not per task)
            if not bool(torch.isfinite(total)):
                self._nonfinite(parts)
                return None
        else:
            self._watch(total, parts)
        # summed here and logged once per epoch: Lightning's ``log`` costs about a millisecond a call,
        # as much as a whole step of a small network
        weighted = total.detach() * x.shape[0]
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._loss_count += x.shape[0]
        return total

    def on_train_epoch_end(self) -> None:
        self.check_finite(everywhere=True)
        if self._loss_sum is None:
            return
        mean, count = self._loss_sum / self._loss_count, self._loss_count
        self._loss_sum, self._loss_count = None, 0
        # batch_size and sync_dist: the sample-weighted epoch mean over all processes of a DDP run
        self.log("train_loss", mean, prog_bar=True, batch_size=count, sync_dist=True)

    def on_validation_start(self) -> None:
        # the validation after a training epoch: not on the weights a non-finite loss has reached
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.check_finite(everywhere=True)

    def on_train_end(self) -> None:
        self.check_finite()  # a training that ends inside an epoch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite()  # never save the weights a non-finite loss has reached

    def _watch(self, total: Tensor, parts: Mapping[str, Tensor]) -> None:
        """Policy ``stop``: remember, on the device, the step, epoch and task losses of the first
        non-finite loss (:meth:`check_finite` raises)."""
        trainer = self._trainer
        step, epoch = (int(trainer.global_step), int(trainer.current_epoch)) if trainer is not None else (0, 0)
        values = torch.stack([loss.detach().float().reshape(()) for loss in parts.values()])
        if self._bad_values is None or self._bad_values.shape != values.shape:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=total.device)
            self._bad_epoch = torch.full((), -1, dtype=torch.long, device=total.device)
            self._bad_values, self._bad_names = torch.zeros_like(values), list(parts)
        assert self._bad_step is not None and self._bad_epoch is not None
        first = (self._bad_step < 0) & ~torch.isfinite(total.detach())
        # masked_fill takes the step and epoch as kernel arguments: nothing is copied from the host
        self._bad_step = self._bad_step.masked_fill(first, step)
        self._bad_epoch = self._bad_epoch.masked_fill(first, epoch)
        self._bad_values = torch.where(first, values, self._bad_values)

    def check_finite(self, everywhere: bool = False) -> None:
        """Policy ``stop``: raise :class:`~dmtg_nas.errors.NonFiniteLossError` for the first non-finite
        loss since the training started (one synchronisation). ``everywhere``: in a distributed run,
        also when only another process had one (a collective: every process calls it, as at an
        epoch's end)."""
        if self._bad_step is None or self._bad_epoch is None or self._bad_values is None:
            return
        step, epoch = (int(v) for v in torch.stack([self._bad_step, self._bad_epoch]).tolist())
        trainer = self._trainer
        if everywhere and trainer is not None and trainer.world_size > 1:
            first = int(trainer.strategy.reduce(self._bad_step.clone(), reduce_op="max").item())
            if step < 0 and first >= 0:  # another process's loss: the averaged gradients carried it here
                raise NonFiniteLossError([], first, int(trainer.current_epoch), {}, "in another process")
        if step < 0:
            return
        values = dict(zip(self._bad_names, self._bad_values.tolist()))
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        self._bad_step = self._bad_epoch = self._bad_values = None
        raise NonFiniteLossError(bad, step, epoch, values)

    def _nonfinite(self, parts: Mapping[str, Tensor]) -> None:
        """Policy ``skip``: record the batch (``training_step`` then returns None: Lightning skips
        backward and the update)."""
        values = {name: float(loss.detach()) for name, loss in parts.items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        step, epoch = int(self.trainer.global_step), int(self.trainer.current_epoch)
        self.nonfinite_skips.append({"step": step, "epoch": epoch, "tasks": bad})
        _logger.warning("non-finite loss at step %d (epoch %d) in task(s) %s: batch skipped", step, epoch, bad)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, targets = batch
        outputs = self(x)
        self.val_metrics.update(outputs.selected() if isinstance(outputs, HeadOutputs) else outputs, targets)

    def on_validation_epoch_end(self) -> None:
        per_task = self.val_metrics.compute()
        self.val_metrics.reset()
        totals = summarize(per_task, self.tasks)
        self.last_validation = per_task
        self.log("val_loss", totals["total_loss"], prog_bar=True)
        if "total_error" in totals:
            self.log("val_total_error", totals["total_error"])
        if self.trainer.loggers:  # per-task curves only where a logger keeps them (a search's logs/)
            for task, row in per_task.items():
                for metric, value in row.items():
                    self.log(f"val/{task}/{metric}", value)

    def configure_optimizers(self) -> Any:
        cfg = self.optimizer_config
        arch = [p for p in self.parameters() if getattr(p, ARCH_PARAM_FLAG, False)]
        arch_ids = {id(p) for p in arch}
        weights = [p for p in self.parameters() if id(p) not in arch_ids]
        groups: list[dict[str, Any]] = [{"params": weights}]
        if arch:
            groups.append({"params": arch, "lr": cfg.logits_lr or cfg.lr, "weight_decay": 0.0})
        opt = make_optimizer(groups, cfg)
        sched = self.lr_schedule_config
        if sched.name == "none":
            return opt
        scheduler: Any
        if sched.name == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=sched.step_size, gamma=sched.gamma)
        elif sched.name == "multistep":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=sched.milestones, gamma=sched.gamma)
        elif sched.name == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.epochs, 1))
        else:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                mode="min",
                factor=sched.factor,
                patience=sched.patience,
                threshold=sched.threshold,
                min_lr=sched.min_lr,
            )
            # train_loss: the epoch's mean training loss, logged by on_train_epoch_end (before Lightning
            # steps epoch schedulers)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "monitor": sched.monitor}}
        return {"optimizer": opt, "lr_scheduler": scheduler}


class BestEpoch(pl.Callback):
    """``strategy.keep: best``: remember the module's weights (and grouping logits) after the epoch
    with the lowest validation ``monitor`` and load them back when training ends, as DMTG's code
    keeps its ``epoch-best.pth`` (the lowest validation error for classification, else loss).

    The snapshot is a CPU copy of the module's state dict, taken after each validation that improves
    on the best so far; it is saved in the search's checkpoints (a resumed run keeps it).
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best: float | None = None
        self.epoch: int | None = None
        self.state: dict[str, Tensor] | None = None

    @staticmethod
    def monitor_for(tasks: Sequence[TaskConfig]) -> str:
        """``val_total_error`` when every task is a classification task, else ``val_loss``."""
        return "val_total_error" if all(t.type in ("binary", "multiclass") for t in tasks) else "val_loss"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if self.best is None or float(value) < self.best:
            self.best, self.epoch = float(value), int(trainer.current_epoch) + 1
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state is not None:
            pl_module.load_state_dict(self.state)
            _logger.info("keep: best: the search's result is epoch %s (%s %.6g)", self.epoch, self.monitor, self.best)

    def record(self) -> dict[str, Any]:
        """What was kept: ``{"policy": "best", "monitor", "epoch", "value"}`` (epoch None: no validation)."""
        return {"policy": "best", "monitor": self.monitor, "epoch": self.epoch, "value": self.best}

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "epoch": self.epoch, "state": self.state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.epoch, self.state = state_dict.get("best"), state_dict.get("epoch"), state_dict.get("state")
