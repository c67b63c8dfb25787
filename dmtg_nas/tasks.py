"""Task types: the loss each task trains with and the metrics it reports.

| type         | head output  | target                | losses (default first) | metrics (``*``: higher is better)     |
|--------------|--------------|-----------------------|------------------------|---------------------------------------|
| regression   | (B, 1)       | (B,) float            | mse, l1, smooth_l1     | mse, mae                              |
| binary       | (B, 1) logit | (B,) float 0/1        | bce (with logits)      | error %, accuracy*                    |
| multiclass   | (B, C)       | (B,) long             | ce                     | error %, accuracy*                    |
| segmentation | (B, C, H, W) | (B, H, W) long        | ce (ignore_index)      | miou*, pixel_accuracy*                |
| depth        | (B, 1, H, W) | (B, 1, H, W), NaN=gap | l1, mse, smooth_l1     | rmse, abs_rel, mae (valid pixels)     |
| normals      | (B, 3, H, W) | (B, 3, H, W), NaN=gap | l1, cosine             | angle_mean, angle_median (degrees),   |
|              |              |                       |                        | within_11.25*, within_22.5*, _30*     |
| keypoints    | (B, 1, H, W) | (B, 1, H, W) map      | l1, mse                | mae, f1* (maps cut at threshold)      |
| edges        | (B, 1, H, W) | (B, 1, H, W) map      | l1, mse                | mae, f1*                              |

Heads of 1-wide vector tasks (regression, binary) output (B, 1); the losses and metrics take it as
(B,) (:func:`squeeze_output`). A task's ``loss:`` picks another loss of its type. Missing target
pixels of dense regression tasks are NaN: the (masked) losses and the metrics skip them, so a data
set encodes its validity mask in the target itself (Taskonomy's depth and normals); segmentation
pixels equal to the task's ``ignore_index`` take no loss and no metric. Keypoint and edge maps are in
whatever units the data set gives (Taskonomy: standardised, or in [0, 1]); F1 cuts predictions
(clamped to [0, 1]) and targets at the task's ``threshold`` in those units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from .config import TaskConfig
from .schema import EVAL_METRICS, HIGHER_IS_BETTER, PRIMARY_METRIC

__all__ = [
    "task_loss",
    "TaskMetrics",
    "HIGHER_IS_BETTER",
    "EVAL_METRICS",
    "PRIMARY_METRIC",
    "AngleError",
    "summarize",
    "squeeze_output",
]


def _masked_mean(elements: Tensor, valid: Tensor, per_valid: int = 1) -> Tensor:
    """Mean of ``elements`` over the entries where ``valid`` (broadcast) holds, 0 (graph kept) where none
    does, computed on the device: no host synchronisation (no ``bool()``, no boolean indexing)."""
    total = torch.where(valid, elements, torch.zeros((), dtype=elements.dtype, device=elements.device)).sum()
    return total / (valid.sum() * per_valid).clamp_min(1)


def _masked_regression(name: str, pred: Tensor, target: Tensor) -> Tensor:
    """Elementwise loss over the finite target entries only (NaN marks missing data), in float32."""
    target = target.reshape(pred.shape)
    valid = torch.isfinite(target)
    p = pred.float()
    t = torch.where(valid, target.float(), p.detach())  # missing entries: no loss, no NaN in the gradient
    if name == "l1":
        elements = F.l1_loss(p, t, reduction="none")
    elif name == "mse":
        elements = F.mse_loss(p, t, reduction="none")
    else:
        elements = F.smooth_l1_loss(p, t, reduction="none")
    return _masked_mean(elements, valid)


def _normals_loss(name: str, pred: Tensor, target: Tensor) -> Tensor:
    """(B, 3, H, W): masked L1 over the 3 channels, or 1 - cosine similarity, on valid pixels (float32)."""
    valid = torch.isfinite(target).all(dim=1, keepdim=True)  # (B, 1, H, W)
    p = pred.float()
    t = torch.where(valid, target.float(), p.detach())
    if name == "cosine":
        return _masked_mean(1.0 - F.cosine_similarity(p, t, dim=1).unsqueeze(1), valid)
    return _masked_mean(F.l1_loss(p, t, reduction="none"), valid, per_valid=pred.shape[1])


def task_loss(task: TaskConfig, pred: Tensor, target: Tensor) -> Tensor:
    """Mean loss of one head over a batch (shapes in the module docstring); returns a scalar."""
    kind, name = task.type, task.loss_name
    if kind == "regression":
        pred = pred.reshape(target.shape)
        if name == "l1":
            return F.l1_loss(pred, target)
        if name == "smooth_l1":
            return F.smooth_l1_loss(pred, target)
        return F.mse_loss(pred, target)
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(pred.reshape(target.shape), target)
    if kind == "multiclass":
        return F.cross_entropy(pred, target)
    if kind == "segmentation":  # mean over the labelled pixels, counted on the device (0 when none is)
        valid = (target != task.ignore_index).sum().clamp_min(1)
        return F.cross_entropy(pred.float(), target, ignore_index=task.ignore_index, reduction="sum") / valid
    if kind == "normals":
        return _normals_loss(name, pred, target)
    return _masked_regression(name, pred, target)  # depth, keypoints, edges


def squeeze_output(task: TaskConfig, pred: Tensor) -> Tensor:
    """Head output in the shape the loss expects: (B,) for 1-wide vector heads, else unchanged."""
    return pred.squeeze(-1) if task.out_features == 1 and not task.dense else pred


class AngleError(torchmetrics.Metric):
    """Angular error between predicted and true surface normals, over valid pixels.

    Keeps a 0.05-degree histogram (3,600 bins), so the median and the fractions within 11.25, 22.5
    and 30 degrees are exact at those thresholds without storing per-pixel errors.
    """

    full_state_update = False
    BIN = 0.05
    hist: Tensor
    total: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("hist", default=torch.zeros(int(180 / self.BIN), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:  # (B, 3, H, W) each
        valid = torch.isfinite(target).all(dim=1)
        p = pred.permute(0, 2, 3, 1)[valid].double()
        t = target.permute(0, 2, 3, 1)[valid].double()
        cos = F.cosine_similarity(p, t, dim=-1, eps=1e-8).clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cos))  # (P,) degrees
        bins = (angle / self.BIN).long().clamp_(0, self.hist.numel() - 1)
        self.hist += torch.bincount(bins, minlength=self.hist.numel()).double()
        self.total += angle.sum()

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        count = self.hist.sum()
        if count == 0:
            nan = torch.tensor(float("nan"))
            return {k: nan for k in ("angle_mean", "angle_median", "within_11.25", "within_22.5", "within_30")}
        cum = torch.cumsum(self.hist, 0)
        median_bin = int(torch.searchsorted(cum, count / 2))
        out = {"angle_mean": self.total / count, "angle_median": torch.tensor((median_bin + 0.5) * self.BIN)}
        for deg in (11.25, 22.5, 30.0):
            key = f"within_{deg:g}"
            out[key] = 100.0 * self.hist[: round(deg / self.BIN)].sum() / count
        return out


def _metrics_for(task: TaskConfig) -> dict[str, torchmetrics.Metric]:
    classification = torchmetrics.classification
    if task.type == "regression":
        return {"mse": torchmetrics.MeanSquaredError(), "mae": torchmetrics.MeanAbsoluteError()}
    if task.type == "binary":
        return {"accuracy": classification.BinaryAccuracy()}
    if task.type == "multiclass":
        return {"accuracy": classification.MulticlassAccuracy(num_classes=task.out_features, average="micro")}
    if task.type == "segmentation":
        c, ignore = task.out_features, task.ignore_index
        return {
            "miou": classification.MulticlassJaccardIndex(num_classes=c, ignore_index=ignore, average="macro"),
            "pixel_accuracy": classification.MulticlassAccuracy(num_classes=c, ignore_index=ignore, average="micro"),
        }
    if task.type == "depth":
        return {
            "rmse": torchmetrics.MeanSquaredError(squared=False),
            "abs_rel": torchmetrics.MeanAbsolutePercentageError(),
            "mae": torchmetrics.MeanAbsoluteError(),
        }
    if task.type == "normals":
        return {"angles": AngleError()}
    return {"mae": torchmetrics.MeanAbsoluteError(), "f1": classification.BinaryF1Score(threshold=task.threshold)}


def _update(task: TaskConfig, name: str, metric: torchmetrics.Metric, pred: Tensor, y: Tensor) -> None:
    kind = task.type
    if kind == "binary":
        metric.update(torch.sigmoid(pred), y.long())
    elif kind == "segmentation":
        metric.update(pred.argmax(1), y)
    elif kind == "normals":
        metric.update(pred, y)
    elif kind in ("depth", "keypoints", "edges"):
        y = y.reshape(pred.shape)
        valid = torch.isfinite(y)
        if kind == "depth" and name == "abs_rel":
            valid &= y > 0
        p, t = pred[valid], y[valid]
        if p.numel() == 0:
            return
        if name == "f1":  # clamp: values outside [0, 1] would be read as logits
            metric.update(p.clamp(0.0, 1.0), (t > task.threshold).long())
        else:
            metric.update(p, t)
    else:
        metric.update(pred, y)


class TaskMetrics(torch.nn.Module):
    """Accumulates every task's loss and metrics over an evaluation pass (torchmetrics).

    In a distributed run ``compute`` combines the states of all processes (each saw a share of the
    data); ``sync=False`` keeps them local (every process evaluated the whole set).
    """

    def __init__(self, tasks: Sequence[TaskConfig], sync: bool = True) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.loss = torch.nn.ModuleDict({t.name: torchmetrics.MeanMetric() for t in tasks})
        self.metrics = torch.nn.ModuleDict({t.name: torch.nn.ModuleDict(_metrics_for(t)) for t in tasks})
        if not sync:
            for metric in self.modules():
                if isinstance(metric, torchmetrics.Metric):
                    metric.sync_on_compute = False
                    metric._to_sync = False

    def _loss(self, task: str) -> torchmetrics.Metric:
        return cast(torchmetrics.Metric, self.loss[task])

    def _metrics(self, task: str) -> dict[str, torchmetrics.Metric]:
        return {k: cast(torchmetrics.Metric, v) for k, v in cast(torch.nn.ModuleDict, self.metrics[task]).items()}

    @torch.no_grad()
    def update(self, preds: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> None:
        for t in self.tasks:
            pred, y = squeeze_output(t, preds[t.name]), targets[t.name]
            pred = pred.float()
            self._loss(t.name).update(task_loss(t, pred, y), weight=y.shape[0])
            for name, metric in self._metrics(t.name).items():
                _update(t, name, metric, pred, y)

    def compute(self) -> dict[str, dict[str, float]]:
        """``{task: {"loss": ..., metric: ...}}``; binary/multiclass tasks also get ``error`` in %.

        Rates that torchmetrics reports as fractions (accuracy, mIoU, F1, abs_rel) stay fractions;
        ``error`` and the normals' ``within_*`` are percentages. A metric with no data is NaN.
        """
        out: dict[str, dict[str, float]] = {}
        for t in self.tasks:
            row = {"loss": float(self._loss(t.name).compute())}
            for name, metric in self._metrics(t.name).items():
                if metric.update_count == 0:
                    row[name] = float("nan")
                    continue
                value = metric.compute()
                if isinstance(value, dict):
                    row.update({k: float(v) for k, v in value.items()})
                else:
                    row[name] = float(value)
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


def is_finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))
