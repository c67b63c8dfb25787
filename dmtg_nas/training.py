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
class RoutedOutput:
    """One task's outputs on all K branches during the search.

    Attributes:
        preds: K tensors of shape (B, out), one per branch head.
        weights: (K,) sample weights z of the task's relaxed Categorical (one-hot when evaluating).
    """

    preds: list[Tensor]
    weights: Tensor

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
    preds = [pred for out in outs for pred in (out.preds if routed else [out])]
    n, k = len(outs), len(preds) // len(outs)
    y = torch.stack(list(ys))  # (n, B, ...)
    stacked = torch.stack(preds).reshape(n, k, *y.shape[1:])
    per_head = fn(stacked, y.unsqueeze(1).expand_as(stacked), reduction="none").reshape(n, k, -1).mean(dim=-1)
    if not routed:
        return per_head[:, 0]
    weights = torch.stack([out.weights for out in outs])  # (n, K)
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
        preds = out.preds if routed else [out]
        if (task.type, task.loss_name) in _ELEMENTWISE and preds:
            pred = preds[0]
            key = (routed, task.type, task.loss_name, len(preds), pred.shape, pred.dtype, y.shape, y.dtype)
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


def make_optimizer(params: Iterable[Any], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The configured optimizer over ``params`` (tensors or parameter groups).

    Adam and AdamW use torch's fused kernels where they take the parameters (see
    :func:`_fused_adam_ok`), else, like SGD, the multi-tensor (``foreach``) implementation, which torch
    does not pick by itself on CPU: its default there is a Python loop over the tensors, slow with the
    K*N small head tensors of the supernet. The updates are the same up to float rounding (foreach:
    bitwise).
    """
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    fused = _fused_adam_ok(tensors)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused, foreach=not fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused, foreach=not fused)
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
        # sync_dist: the epoch mean over all processes of a DDP run (a no-op in one process)
        self.log(
            "train_loss", total, prog_bar=True, on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True
        )
        return total

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
