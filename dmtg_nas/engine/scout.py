"""The affinity scout's grouping: clusters of a task affinity, and the polish of a grouping on it.

The scout (:class:`~dmtg_nas.nni.oneshot.DMTGLightningModule`) trains the supernet's first
``affinity.epochs`` epochs with the grouping logits held where they start (uniform by default), so
that every branch is trained by every task, and then measures the tasks' affinity in that supernet:
the attribution affinity of their predictions (:func:`dmtg_nas.warmstart.attribution_affinity`: how
much the input directions each task's prediction depends on overlap; the warm start's affinity,
measured on one network instead of N single-task networks), or TAG's lookahead affinity on its
first branch (:func:`lookahead_affinity`). The tasks are cut into clusters by spectral clustering
of the affinity (:func:`affinity_clusters`), the logits restart from them (:func:`start_logits`)
and the relaxation trains on. After the supernet,
:func:`polish_assignment` takes the relaxation's argmax and applies the discrete moves (one task to
another branch, two tasks of a group together to another, or two groups merged) that raise the
grouping's within-group affinity (:func:`clustering_score`), until none does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from ..schema import TaskConfig
from ..tasks import squeeze_output, task_loss

__all__ = [
    "affinity_clusters",
    "cluster_count",
    "clustering_score",
    "lookahead_affinity",
    "polish_assignment",
    "spectral_clusters",
    "start_logits",
]


def _standardized(affinity: np.ndarray) -> np.ndarray:
    """The symmetric affinity z-scored over its off-diagonal entries, diagonal zero (equal
    affinities: all zero)."""
    n = affinity.shape[0]
    a = (affinity + affinity.T) / 2
    off = a[~np.eye(n, dtype=bool)]
    w = (a - off.mean()) / (off.std() + 1e-12) if n > 1 else np.zeros_like(a)
    np.fill_diagonal(w, 0.0)
    return w


def _similarity(affinity: np.ndarray) -> np.ndarray:
    """The clustering's similarity graph: exp of the z-scored symmetric affinities, no self-loops."""
    w = np.exp(np.clip(_standardized(affinity), -50.0, 50.0))
    np.fill_diagonal(w, 0.0)
    return w


def cluster_count(affinity: np.ndarray, k_max: int) -> int:
    """How many clusters the affinity supports, in ``2..k_max``: the number of eigenvalues of the
    similarity graph's normalized Laplacian below 1.

    The eigenvalues sum to N, so 1 is their mean; a graph without structure (all similarities
    equal) has one eigenvalue 0 and all others above 1, while each well-separated cluster adds an
    eigenvalue near 0. Counting those below the mean keeps weakly separated but real clusters
    (a largest-eigengap rule merges them) and does not invent clusters to fill spare branches.
    """
    n = affinity.shape[0]
    if k_max <= 2 or n <= 2:
        return max(1, min(k_max, n))
    w = _similarity(affinity)
    d = 1.0 / np.sqrt(w.sum(1) + 1e-12)
    lam = np.linalg.eigvalsh(np.eye(n) - d[:, None] * w * d[None, :])
    return int(np.clip(int(np.sum(lam < 1.0)), 2, min(k_max, n)))


def spectral_clusters(affinity: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """Spectral clustering of tasks into ``k`` clusters from a symmetric affinity matrix."""
    n = affinity.shape[0]
    if k <= 1 or n <= 1:
        return [0] * n
    if k >= n:
        return list(range(n))
    w = _similarity(affinity)
    from sklearn.cluster import SpectralClustering

    labels = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed).fit_predict(w)
    return [int(v) for v in labels]


def affinity_clusters(affinity: np.ndarray, k_max: int, clusters: str = "auto", seed: int = 0) -> list[int]:
    """Each task's cluster: spectral clusters of ``affinity``, as many as it supports in ``2..k_max``
    (``clusters: auto``, :func:`cluster_count`) or ``k_max`` (``k``)."""
    k = cluster_count(affinity, k_max) if clusters == "auto" else k_max
    return spectral_clusters(affinity, k, seed)


def start_logits(assignment: Sequence[int], branches: int, base: float, strength: float) -> list[list[float]]:
    """Starting logit rows (one per task, ``branches`` each): ``base`` everywhere plus ``strength``
    on each task's branch in ``assignment``."""
    return [[base + (strength if k == b else 0.0) for k in range(branches)] for b in assignment]


def _score(labels: np.ndarray, w: np.ndarray) -> float:
    """:func:`clustering_score` on the standardized affinity ``w``."""
    score = 0.0
    for group in np.unique(labels):
        members = np.flatnonzero(labels == group)
        score += float(w[np.ix_(members, members)].sum()) / len(members)
    return score


def clustering_score(assignment: Sequence[int], affinity: np.ndarray) -> float:
    """A grouping's within-group affinity: the sum over groups of the z-scored affinities of its
    pairs divided by its size (the ratio association that spectral clustering relaxes). A task
    alone scores 0; a pair of tasks above the mean affinity raises the score when grouped."""
    return _score(np.asarray(assignment), _standardized(np.asarray(affinity, dtype=float)))


def polish_assignment(
    assignment: Sequence[int], affinity: np.ndarray, branches: int, max_moves: int | None = None
) -> tuple[list[int], list[dict[str, Any]]]:
    """Best-improvement discrete moves on :func:`clustering_score` from ``assignment`` (each task's
    branch, in ``range(branches)``): one task, or two tasks of one group, to another branch (empty
    branches included), or one group merged into another. Returns the new assignment and the moves
    taken, in order (``{"tasks": [...], "from": k, "to": k', "gain": g}``); stops when no move raises
    the score."""
    current = [int(b) for b in assignment]
    n = len(current)
    limit = max_moves if max_moves is not None else 2 * n * max(branches, 1)
    moves: list[dict[str, Any]] = []
    w = _standardized(np.asarray(affinity, dtype=float))  # once: every candidate is scored on it
    score = _score(np.asarray(current), w)
    for _ in range(limit):
        best: tuple[float, list[int], list[int], int, int] | None = None
        candidates: list[tuple[list[int], int, int]] = []
        for i in range(n):  # one task elsewhere
            for b in range(branches):
                if b != current[i]:
                    candidates.append(([i], current[i], b))
        for i in range(n):  # two tasks of one group together elsewhere (a split of a merged group)
            for j in range(i + 1, n):
                if current[i] == current[j]:
                    for b in range(branches):
                        if b != current[i]:
                            candidates.append(([i, j], current[i], b))
        used = sorted(set(current))
        for a in used:  # a whole group into another
            for b in used:
                if a != b:
                    candidates.append(([i for i in range(n) if current[i] == a], a, b))
        for tasks, src, dst in candidates:
            trial = list(current)
            for i in tasks:
                trial[i] = dst
            gain = _score(np.asarray(trial), w) - score
            if gain > 1e-9 and (best is None or gain > best[0]):
                best = (gain, trial, tasks, src, dst)
        if best is None:
            break
        gain, current, tasks, src, dst = best
        score += gain
        moves.append({"tasks": tasks, "from": src, "to": dst, "gain": round(gain, 6)})
    return current, moves


def _task_losses(
    encoder: nn.Module,
    params: Mapping[str, torch.Tensor],
    heads: Sequence[nn.Module],
    tasks: Sequence[TaskConfig],
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
) -> list[torch.Tensor]:
    """Each task's loss through its head on ``encoder`` run with ``params``, on copies of its buffers
    (batch-norm statistics are left as they were)."""
    buffers = {k: v.clone() for k, v in encoder.named_buffers()}
    feats = functional_call(encoder, {**params, **buffers}, (x,))
    return [task_loss(t, squeeze_output(t, h(feats)), targets[t.name]) for t, h in zip(tasks, heads)]


def _per_task_grads(losses: Iterable[torch.Tensor], inputs: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """Each loss's gradient on ``inputs`` (``None`` where an input does not reach it), one backward
    pass per loss."""
    return [torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True) for loss in losses]


def lookahead_affinity(
    encoder: nn.Module,
    heads: Sequence[nn.Module],
    tasks: Sequence[TaskConfig],
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
    lr: float,
) -> torch.Tensor:
    """One measurement of ``Z[i, j] = 1 - L_j(theta - lr * grad_theta L_i) / L_j(theta)`` (N, N)."""
    params = dict(encoder.named_parameters())
    with torch.enable_grad():
        losses = _task_losses(encoder, params, heads, tasks, x, targets)
        grads = _per_task_grads(losses, list(params.values()))
    n = len(tasks)
    z = torch.zeros(n, n)
    with torch.no_grad():
        before = torch.stack([loss.detach() for loss in losses])
        for i in range(n):
            moved = {name: p - lr * g if g is not None else p for (name, p), g in zip(params.items(), grads[i])}
            after = torch.stack(_task_losses(encoder, moved, heads, tasks, x, targets))
            z[i] = 1 - after / before.clamp_min(1e-12)
    return z


def gradient_similarity(
    encoder: nn.Module,
    heads: Sequence[nn.Module],
    tasks: Sequence[TaskConfig],
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
    params: Sequence[str] | None = None,
) -> torch.Tensor:
    """(N, N) cosine similarity of the tasks' loss gradients on ``encoder``'s parameters (those named
    in ``params``; default: all), each task read through its own head in ``heads``; the encoder's
    buffers (batch-norm statistics) are left as they were."""
    named = dict(encoder.named_parameters())
    inputs = [named[name] for name in (params if params is not None else named) if named[name].requires_grad]
    n = len(tasks)
    with torch.enable_grad():
        losses = torch.stack(_task_losses(encoder, named, heads, tasks, x, targets))
        try:  # every task's gradient in one batched backward pass
            grads: Sequence[torch.Tensor | None] = torch.autograd.grad(
                losses,
                inputs,
                grad_outputs=torch.eye(n, dtype=losses.dtype, device=losses.device),
                is_grads_batched=True,
                allow_unused=True,
            )
        except RuntimeError:  # an operation vmap cannot batch: one backward per task
            per = _per_task_grads(losses, inputs)
            grads = [
                torch.stack([g[j] if g[j] is not None else p.new_zeros(p.shape) for g in per])
                for j, p in enumerate(inputs)
            ]
    rows = torch.cat(
        [(g if g is not None else p.new_zeros(n, *p.shape)).reshape(n, -1) for g, p in zip(grads, inputs)], dim=1
    )
    rows = rows.detach().double()
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return unit @ unit.T
