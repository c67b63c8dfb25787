"""Task types: the loss each task trains with and the metrics it reports.

| type       | head output | loss                         | metrics (lower is better unless noted) |
|------------|-------------|------------------------------|----------------------------------------|
| regression | (B,)        | mean squared error           | mse, mae                               |
| binary     | (B,) logit  | binary cross-entropy (logit) | error %, accuracy (higher)             |
| multiclass | (B, C)      | cross-entropy                | error %, accuracy (higher)             |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from .config import TaskConfig

__all__ = ["task_loss", "TaskMetrics", "HIGHER_IS_BETTER"]

HIGHER_IS_BETTER = {"accuracy"}


def task_loss(task: TaskConfig, pred: Tensor, target: Tensor) -> Tensor:
    """Mean loss of one head over a batch. ``pred``: (B,) or (B, C); returns a scalar."""
    if task.type == "regression":
        return F.mse_loss(pred.reshape(target.shape), target)
    if task.type == "binary":
        return F.binary_cross_entropy_with_logits(pred.reshape(target.shape), target)
    return F.cross_entropy(pred, target)


def squeeze_output(task: TaskConfig, pred: Tensor) -> Tensor:
    """Head output in the shape the loss expects: (B,) for 1-wide heads, (B, C) otherwise."""
    return pred.squeeze(-1) if task.out_features == 1 else pred


class TaskMetrics(torch.nn.Module):
    """Accumulates every task's loss and metrics over an evaluation pass (torchmetrics)."""

    def __init__(self, tasks: Sequence[TaskConfig]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.loss = torch.nn.ModuleDict({t.name: torchmetrics.MeanMetric() for t in tasks})
        metrics: dict[str, torch.nn.ModuleDict] = {}
        for t in tasks:
            if t.type == "regression":
                metrics[t.name] = torch.nn.ModuleDict(
                    {"mse": torchmetrics.MeanSquaredError(), "mae": torchmetrics.MeanAbsoluteError()}
                )
            elif t.type == "binary":
                metrics[t.name] = torch.nn.ModuleDict({"accuracy": torchmetrics.classification.BinaryAccuracy()})
            else:
                metrics[t.name] = torch.nn.ModuleDict(
                    {
                        "accuracy": torchmetrics.classification.MulticlassAccuracy(
                            num_classes=t.num_classes or 2, average="micro"
                        )
                    }
                )
        self.metrics = torch.nn.ModuleDict(metrics)

    def _loss(self, task: str) -> torchmetrics.Metric:
        return cast(torchmetrics.Metric, self.loss[task])

    def _metrics(self, task: str) -> dict[str, torchmetrics.Metric]:
        return {k: cast(torchmetrics.Metric, v) for k, v in cast(torch.nn.ModuleDict, self.metrics[task]).items()}

    @torch.no_grad()
    def update(self, preds: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        for t in self.tasks:
            pred, y = squeeze_output(t, preds[t.name]), targets[t.name]
            self._loss(t.name).update(task_loss(t, pred, y), weight=y.shape[0])
            for metric in self._metrics(t.name).values():
                if t.type == "binary":
                    metric.update(torch.sigmoid(pred), y.long())
                else:
                    metric.update(pred, y)

    def compute(self) -> dict[str, dict[str, float]]:
        """``{task: {"loss": ..., metric: ...}}``; binary/multiclass tasks also get ``error`` in %."""
        out: dict[str, dict[str, float]] = {}
        for t in self.tasks:
            row = {"loss": float(self._loss(t.name).compute())}
            for name, metric in self._metrics(t.name).items():
                row[name] = float(metric.compute())
            if "accuracy" in row:
                row["error"] = 100.0 * (1.0 - row["accuracy"])
            out[t.name] = row
        return out

    def reset(self) -> None:
        for m in self.modules():
            if isinstance(m, torchmetrics.Metric):
                m.reset()


def summarize(per_task: Mapping[str, Mapping[str, float]], tasks: Sequence[TaskConfig]) -> dict[str, float]:
    """Totals over tasks: ``total_loss`` (sum of task losses, unweighted), ``weighted_loss``, and for
    classification tasks ``total_error`` (sum of error %, CelebA's headline)."""
    totals = {
        "total_loss": sum(per_task[t.name]["loss"] for t in tasks),
        "weighted_loss": sum(t.weight * per_task[t.name]["loss"] for t in tasks),
    }
    errors = [per_task[t.name]["error"] for t in tasks if "error" in per_task[t.name]]
    if errors:
        totals["total_error"] = sum(errors)
    return totals
