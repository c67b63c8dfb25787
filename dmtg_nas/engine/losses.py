"""Multi-task losses: of a plain network (``{task: prediction}``) and, per head, of a supernet.

A plain network's loss is ``sum_i w_i * L_i(pred_i, y_i)`` (:func:`multitask_loss`). A supernet's
forward returns every task's predictions on all K branches (:class:`HeadOutputs`);
:func:`head_losses` gives each head's loss ``L_i(head[k, i](branch_k(x)), y_i)`` and leaves how they
are weighted to the search method (:meth:`dmtg_nas.nni.router.RouterBank.loss`).

Tasks that share a loss that is a mean over every element (:data:`ELEMENTWISE`), their number of
heads and their shapes take one loss call for all their heads (``reduction="none"``, then a mean per
head): the values of one :func:`~dmtg_nas.tasks.task_loss` call per head, at a fraction of the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schema import TaskConfig
from ..tasks import squeeze_output, task_loss

__all__ = [
    "ELEMENTWISE",
    "HeadOutputs",
    "LossBlock",
    "constant",
    "head_losses",
    "multitask_loss",
    "take",
    "weighted_sum",
]

# Losses whose batch mean ``task_loss`` takes over every element of (B, ...) predictions and targets.
ELEMENTWISE: dict[tuple[str, str], Callable[..., Tensor]] = {
    ("binary", "bce"): F.binary_cross_entropy_with_logits,
    ("regression", "mse"): F.mse_loss,
    ("regression", "l1"): F.l1_loss,
    ("regression", "smooth_l1"): F.smooth_l1_loss,
}


# the small constant tensors of a step's losses (task indices, task weights), one copy per device
_CONSTANTS: dict[tuple[Any, ...], Tensor] = {}


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())  # torch < 2.3


def constant(values: Sequence[float] | Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``torch.tensor(values)`` on ``device``, made once: a tensor built from Python values on a GPU is
    a copy from the host that waits for the GPU to finish its queue, in every step that builds it.
    (Inside ``torch.compile`` it is a constant of the graph, built as usual.)"""
    if _compiling():
        return torch.tensor(list(values), dtype=dtype, device=device)
    key = (tuple(values), str(device), dtype)
    found = _CONSTANTS.get(key)
    if found is None:
        if len(_CONSTANTS) > 4096:  # a bound, never reached by one run's few task sets
            _CONSTANTS.clear()
        found = _CONSTANTS[key] = torch.tensor(list(values), dtype=dtype, device=device)
    return found


def take(t: Tensor, dim: int, index: Sequence[int]) -> Tensor:
    """``t``'s entries ``index`` along ``dim``: a slice where the indices are adjacent and ascending (no
    copy), else one ``index_select`` with the index tensor made once (:func:`constant`)."""
    first, n = index[0], len(index)
    if list(index) == list(range(first, first + n)):
        return t[(slice(None),) * dim + (slice(first, first + n),)]
    return t.index_select(dim, constant(index, t.device, torch.long))


@dataclass
class HeadOutputs:
    """Every task's predictions on all K branches for one batch (what a supernet returns).

    Attributes:
        task_names: the N tasks, in the network's order.
        choice: (N,) each task's branch as the network would be pruned now (validation reads those).
        bank: (K, B, W) the predictions of all heads when they are linear layers run as one matrix per
            branch, task i in columns ``offsets[i]:offsets[i + 1]``; else None.
        offsets: N + 1 column offsets into ``bank``.
        per_task: ``per_task[i][k]``: task i's prediction on branch k (when ``bank`` is None).
    """

    task_names: list[str]
    choice: Tensor
    bank: Tensor | None = None
    offsets: Sequence[int] = ()
    per_task: list[list[Tensor]] | None = None

    @property
    def num_branches(self) -> int:
        return int(self.bank.shape[0]) if self.bank is not None else len(self.per_task[0])  # type: ignore[index]

    def preds(self, i: int) -> list[Tensor]:
        """Task i's K predictions, (B, out) each."""
        if self.bank is not None:
            lo, hi = self.offsets[i], self.offsets[i + 1]
            return list(self.bank[:, :, lo:hi].unbind(0))
        assert self.per_task is not None
        return self.per_task[i]

    def signature(self, i: int) -> tuple[Any, ...]:
        """Shape and dtype of one of task i's predictions (without making the per-head views)."""
        if self.bank is not None:
            width = self.offsets[i + 1] - self.offsets[i]
            return (torch.Size((self.bank.shape[1], width)), self.bank.dtype)
        assert self.per_task is not None
        return (self.per_task[i][0].shape, self.per_task[i][0].dtype)

    def selected(self) -> dict[str, Tensor]:
        """``{task: prediction}`` of each task's chosen branch (what the pruned network outputs)."""
        choice = self.choice.tolist()
        return {name: self.preds(i)[int(choice[i])] for i, name in enumerate(self.task_names)}


@dataclass
class LossBlock:
    """Head losses of some tasks: ``losses`` (n, K) for ``tasks`` (indices) that took one loss call,
    or, for one task, its K losses as a list of scalars (one ``task_loss`` call per head)."""

    tasks: list[int]
    losses: Tensor | list[Tensor]


def _elementwise(task: TaskConfig) -> bool:
    return (task.type, task.loss_name) in ELEMENTWISE


def head_losses(tasks: Sequence[TaskConfig], outputs: HeadOutputs, targets: Mapping[str, Tensor]) -> list[LossBlock]:
    """Every head's loss ``L_i(head[k, i](branch_k(x)), y_i)``, unweighted, as blocks: first each
    task that takes one call per head (in task order), then each group of tasks batched into one call."""
    blocks: list[LossBlock] = []
    batched: dict[tuple[Any, ...], list[int]] = {}
    k = outputs.num_branches
    for i, task in enumerate(tasks):
        y = targets[task.name]
        if _elementwise(task) and k:
            shape, dtype = outputs.signature(i)
            batched.setdefault((task.type, task.loss_name, k, shape, dtype, y.shape, y.dtype), []).append(i)
            continue
        losses = [task_loss(task, squeeze_output(task, pred), y) for pred in outputs.preds(i)]
        blocks.append(LossBlock([i], losses))
    for idx in batched.values():
        blocks.append(LossBlock(idx, _batched_head_losses(tasks, idx, outputs, targets)))
    return blocks


def _batched_head_losses(
    tasks: Sequence[TaskConfig], idx: Sequence[int], outputs: HeadOutputs, targets: Mapping[str, Tensor]
) -> Tensor:
    """(n, K) head losses of tasks ``idx`` that share an :data:`ELEMENTWISE` loss and shapes, in one call."""
    fn = ELEMENTWISE[(tasks[idx[0]].type, tasks[idx[0]].loss_name)]
    y = torch.stack([targets[tasks[i].name] for i in idx])  # (n, B, ...)
    n = len(idx)
    bank = outputs.bank
    if bank is not None and y.dim() == 2 and outputs.signature(idx[0])[0][1] == 1:
        # one column per task in the bank: the columns (a slice when they are adjacent), no per-head views
        stacked = take(bank, 2, [outputs.offsets[i] for i in idx]).permute(2, 0, 1)  # (n, K, B)
    else:
        preds = [pred for i in idx for pred in outputs.preds(i)]
        stacked = torch.stack(preds).reshape(n, len(preds) // n, *y.shape[1:])
    k = stacked.shape[1]
    return fn(stacked, y.unsqueeze(1).expand_as(stacked), reduction="none").reshape(n, k, -1).mean(dim=-1)


def _batched_losses(tasks: Sequence[TaskConfig], outs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """(n,) losses of n tasks of a plain network that share an :data:`ELEMENTWISE` loss and shapes."""
    fn = ELEMENTWISE[(tasks[0].type, tasks[0].loss_name)]
    y = torch.stack(list(ys))  # (n, B, ...)
    stacked = torch.stack(list(outs)).reshape(len(outs), 1, *y.shape[1:])
    per_head = fn(stacked, y.unsqueeze(1).expand_as(stacked), reduction="none").reshape(len(outs), 1, -1).mean(dim=-1)
    return per_head[:, 0]


def weighted_sum(weights: Sequence[float], losses: Tensor) -> Tensor:
    """``sum_j weights[j] * losses[j]`` (a plain sum when every weight is 1)."""
    if all(w == 1.0 for w in weights):
        return losses.sum()
    return (constant(weights, losses.device, losses.dtype) * losses).sum()


def multitask_loss(
    tasks: Sequence[TaskConfig], outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_i w_i * L_i(pred_i, y_i)`` of a plain network, and each task's (unweighted) loss."""
    parts: dict[str, Tensor] = {}
    terms: list[Tensor] = []
    batched: dict[tuple[Any, ...], list[TaskConfig]] = {}
    for task in tasks:
        out, y = outputs[task.name], targets[task.name]
        if _elementwise(task):
            key = (task.type, task.loss_name, out.shape, out.dtype, y.shape, y.dtype)
            batched.setdefault(key, []).append(task)
            continue
        loss = task_loss(task, squeeze_output(task, out), y)
        parts[task.name] = loss
        terms.append(task.weight * loss)
    for group in batched.values():
        losses = _batched_losses(group, [outputs[t.name] for t in group], [targets[t.name] for t in group])
        parts.update(zip([t.name for t in group], losses.unbind()))
        terms.append(weighted_sum([t.weight for t in group], losses))
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total, {task.name: parts[task.name] for task in tasks}
