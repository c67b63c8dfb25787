"""The multi-task training module (NNI's Lightning evaluator side).

:class:`MultiTaskModule` trains any network whose forward returns ``{task: output}``: the grouping
supernet during the search (outputs are :class:`RoutedOutput`: all K heads' predictions and their
sample weights) and the frozen grouped network afterwards (plain tensors).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from nni.nas.evaluator.pytorch import LightningModule
from torch import Tensor, nn

from .config import LRScheduleConfig, OptimizerConfig, TaskConfig
from .tasks import TaskMetrics, squeeze_output, summarize, task_loss

__all__ = ["RoutedOutput", "MultiTaskModule", "multitask_loss", "make_optimizer", "ARCH_PARAM_FLAG"]

ARCH_PARAM_FLAG = "_dmtg_grouping_logit"

_logger = logging.getLogger(__name__)


@dataclass
class RoutedBatch:
    """Every task's routed output at once, as the supernet computes it from head banks
    (:class:`~dmtg_nas.space.HeadBank`).

    Attributes:
        preds: (K, B, W): the predictions of all heads on every branch, task i in columns
            ``offsets[i]:offsets[i + 1]``.
        weights: (N, K) sample weights z (one-hot when evaluating).
        offsets: N + 1 column offsets.
    """

    preds: Tensor
    weights: Tensor
    offsets: Sequence[int]


class RoutedOutput:
    """One task's outputs on all K branches during the search.

    Attributes:
        preds: K tensors of shape (B, out), one per branch head.
        weights: (K,) sample weights z of the task's relaxed Categorical (one-hot when evaluating).
        batch, index: for an output that is row ``index`` of a :class:`RoutedBatch` (``preds`` and
            ``weights`` are then views of it, made when first read); the loss then reads the batch.
    """

    def __init__(
        self,
        preds: list[Tensor] | None = None,
        weights: Tensor | None = None,
        *,
        batch: RoutedBatch | None = None,
        index: int = -1,
    ) -> None:
        if batch is None and (preds is None or weights is None):
            raise ValueError("a routed output needs its predictions and weights, or a routed batch")
        self._preds = preds
        self._weights = weights
        self.batch = batch
        self.index = index

    @property
    def preds(self) -> list[Tensor]:
        if self._preds is None:
            assert self.batch is not None
            lo, hi = self.batch.offsets[self.index], self.batch.offsets[self.index + 1]
            self._preds = list(self.batch.preds[:, :, lo:hi].unbind(0))
        return self._preds

    @property
    def weights(self) -> Tensor:
        if self._weights is None:
            assert self.batch is not None
            self._weights = self.batch.weights[self.index]
        return self._weights

    @property
    def num_branches(self) -> int:
        return int(self.batch.preds.shape[0]) if self.batch is not None else len(self.preds)

    def pred_signature(self) -> tuple[Any, ...]:
        """Shape and dtype of one head's prediction (without making the per-head views)."""
        if self.batch is not None:
            b = self.batch.preds
            width = self.batch.offsets[self.index + 1] - self.batch.offsets[self.index]
            return (torch.Size((b.shape[1], width)), b.dtype)
        return (self.preds[0].shape, self.preds[0].dtype)

    def selected(self) -> Tensor:
        """The prediction of the most likely branch (what the pruned network will output)."""
        return self.preds[int(torch.argmax(self.weights))]


# Losses whose batch mean ``task_loss`` takes over every element of (B, ...) predictions and targets:
# the heads of several tasks can then share one call (reduction "none", then a mean per head).
_ELEMENTWISE: dict[tuple[str, str], Callable[..., Tensor]] = {
    ("binary", "bce"): F.binary_cross_entropy_with_logits,
    ("regression", "mse"): F.mse_loss,
    ("regression", "l1"): F.l1_loss,
    ("regression", "smooth_l1"): F.smooth_l1_loss,
}


def _routed_loss(task: TaskConfig, out: RoutedOutput, y: Tensor) -> Tensor:
    """``sum_k z[k] * L(head[k], y)`` as K calls of :func:`~dmtg_nas.tasks.task_loss`."""
    loss: Tensor | None = None
    for k, pred in enumerate(out.preds):
        term = out.weights[k] * task_loss(task, squeeze_output(task, pred), y)
        loss = term if loss is None else loss + term
    assert loss is not None
    return loss


def _batched_losses(tasks: Sequence[TaskConfig], outs: Sequence[Any], ys: Sequence[Tensor]) -> Tensor:
    """(n,) losses of n tasks with the same loss from :data:`_ELEMENTWISE`, number of heads,
    prediction and target shapes, in one loss call over their stacked predictions: per-element
    losses, each head's mean over its elements, then for :class:`RoutedOutput` s
    ``sum_k z[i,k] * L(head[k,i], y_i)`` (the values of one :func:`~dmtg_nas.tasks.task_loss` call per head)."""
    fn = _ELEMENTWISE[(tasks[0].type, tasks[0].loss_name)]
    routed = isinstance(outs[0], RoutedOutput)
    y = torch.stack(list(ys))  # (n, B, ...)
    n = len(outs)
    batch = outs[0].batch if routed else None
    # the group shares one prediction shape (the key of multitask_loss), so the first output's width holds for all
    if (
        batch is not None
        and y.dim() == 2
        and outs[0].pred_signature()[0][1] == 1
        and all(o.batch is batch for o in outs)
    ):
        # one column per task in the routed batch: gather the columns and rows, no per-head views
        rows = torch.tensor([o.index for o in outs], device=batch.preds.device)
        cols = torch.tensor([batch.offsets[o.index] for o in outs], device=batch.preds.device)
        stacked = batch.preds.index_select(2, cols).permute(2, 0, 1)  # (n, K, B)
        weights = batch.weights.index_select(0, rows)  # (n, K)
    else:
        preds = [pred for out in outs for pred in (out.preds if routed else [out])]
        stacked = torch.stack(preds).reshape(n, len(preds) // n, *y.shape[1:])
        weights = torch.stack([out.weights for out in outs]) if routed else None  # (n, K)
    k = stacked.shape[1]
    per_head = fn(stacked, y.unsqueeze(1).expand_as(stacked), reduction="none").reshape(n, k, -1).mean(dim=-1)
    if weights is None:
        return per_head[:, 0]
    return (weights * per_head).sum(dim=-1)


def multitask_loss(
    tasks: Sequence[TaskConfig], outputs: Mapping[str, Any], targets: Mapping[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_i w_i * sum_k z[i,k] * L_i(head[k,i], y_i)`` (a plain network: ``sum_i w_i * L_i``).

    Returns the total and each task's (unweighted, sample-weighted over k) loss. Tasks that share a
    loss from :data:`_ELEMENTWISE`, their number of heads and shapes take one loss call for all their
    heads (:func:`_batched_losses`); the values are those of one call per head.
    """
    parts: dict[str, Tensor] = {}
    terms: list[Tensor] = []
    batched: dict[tuple[Any, ...], list[TaskConfig]] = {}
    for task in tasks:
        out, y = outputs[task.name], targets[task.name]
        routed = isinstance(out, RoutedOutput)
        if (task.type, task.loss_name) in _ELEMENTWISE and (not routed or out.num_branches):
            heads, (shape, dtype) = (out.num_branches, out.pred_signature()) if routed else (1, (out.shape, out.dtype))
            key = (routed, task.type, task.loss_name, heads, shape, dtype, y.shape, y.dtype)
            batched.setdefault(key, []).append(task)
            continue
        loss = _routed_loss(task, out, y) if routed else task_loss(task, squeeze_output(task, out), y)
        parts[task.name] = loss
        terms.append(task.weight * loss)
    for group in batched.values():
        losses = _batched_losses(group, [outputs[t.name] for t in group], [targets[t.name] for t in group])
        parts.update(zip([t.name for t in group], losses.unbind()))
        weights = torch.tensor([t.weight for t in group], dtype=losses.dtype, device=losses.device)
        terms.append((weights * losses).sum())
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total, {task.name: parts[task.name] for task in tasks}


def _selected(outputs: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: v.selected() if isinstance(v, RoutedOutput) else v for k, v in outputs.items()}


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


class MultiTaskModule(LightningModule):
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
        self.optimizer_config = optimizer
        self.lr_schedule_config = lr_schedule
        self.epochs = epochs
        self.channels_last = channels_last
        self.compile = compile
        self.val_metrics = TaskMetrics(self.tasks)
        self.last_validation: dict[str, dict[str, float]] = {}
        # this epoch's sum of loss * batch size and its sample count, logged at the epoch's end
        self._loss_sum: Tensor | None = None
        self._loss_count = 0

    def set_model(self, model: nn.Module) -> None:
        """Train ``model``; with ``channels_last`` its convolution weights switch to NHWC, with
        ``compile`` its forward runs through ``torch.compile`` (the module itself, its parameter names
        and checkpoints stay as they are)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        super().set_model(model)
        # kept out of the module tree: the compiled wrapper would add a second name for every weight
        self.__dict__["_compiled"] = torch.compile(model) if self.compile else None

    def forward(self, x: Tensor) -> Any:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        compiled = self.__dict__.get("_compiled")
        return compiled(x) if compiled is not None else self.model(x)

    def on_fit_end(self) -> None:
        if self.channels_last:  # hand back an ordinary (NCHW) network
            self.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x, targets = batch
        total, parts = multitask_loss(self.tasks, self(x), targets)
        if not bool(torch.isfinite(total)):
            self._nonfinite(parts)
            return None
        # summed here and logged once per epoch: Lightning's ``log`` costs about a millisecond a call,
        # as much as a whole step of a small network
        weighted = total.detach() * x.shape[0]
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._loss_count += x.shape[0]
        return total

    def on_train_epoch_end(self) -> None:
        if self._loss_sum is None:
            return
        mean, count = self._loss_sum / self._loss_count, self._loss_count
        self._loss_sum, self._loss_count = None, 0
        # batch_size and sync_dist: the sample-weighted epoch mean over all processes of a DDP run
        self.log("train_loss", mean, prog_bar=True, batch_size=count, sync_dist=True)

    def _nonfinite(self, parts: Mapping[str, Tensor]) -> None:
        """Policy ``stop``: raise :class:`~dmtg_nas.runstate.NonFiniteLossError` naming the tasks;
        ``skip``: record the batch (``training_step`` then returns None: Lightning skips backward
        and the update)."""
        from .errors import NonFiniteLossError

        values = {name: float(loss.detach()) for name, loss in parts.items()}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        step, epoch = int(self.trainer.global_step), int(self.trainer.current_epoch)
        if self.nonfinite == "stop":
            raise NonFiniteLossError(bad, step, epoch, values)
        self.nonfinite_skips.append({"step": step, "epoch": epoch, "tasks": bad})
        _logger.warning("non-finite loss at step %d (epoch %d) in task(s) %s: batch skipped", step, epoch, bad)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, targets = batch
        self.val_metrics.update(_selected(self(x)), targets)

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
                opt, mode="min", factor=sched.factor, patience=sched.patience
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}
        return {"optimizer": opt, "lr_scheduler": scheduler}
