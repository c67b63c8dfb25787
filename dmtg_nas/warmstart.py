"""Warm start of the grouping logits from attribution affinity.

The one-shot relaxation alone commits to whatever assignment the early noise favours: once a branch
has adapted to the tasks that happened to lean on it, every task's head on its own branch has the
lowest loss, so the assignment reinforces itself (measured: logits pass p = 0.5 within the first
quarter of training, and per-branch validation losses then always confirm the current assignment).
The warm start gives the relaxation an informed starting point instead of a uniform one:

1. train one small network per task (the spec's encoder, at ``warmup.width`` of its widths, see
   :func:`proxy_width`, and the task's head, independent weights) for ``warmup.epochs`` epochs,
   and at least ``warmup.min_steps`` optimisation steps (small data sets would otherwise stop
   before the predictors have found their features);
2. attribution affinity: for task i, the gradients of its prediction with respect to the input over
   ``warmup.samples`` training inputs, stacked as G_i (samples x input size; one block of rows per
   output channel), and U_i its top ``warmup.rank`` right singular vectors, i.e. the input directions
   the task's predictor depends on; ``A[i, j] = ||U_i^T U_j||_F^2 / rank`` in [0, 1] (the mean squared
   cosine of the principal angles between the two subspaces). Attribution-map similarity is a
   known predictor of transferability between tasks (Song et al., "Deep Model Transferability from
   Attribution Maps", NeurIPS 2019);
3. spectral clustering of the z-scored affinities into K clusters, or (``warmup.clusters: auto``,
   the default) into as many as the affinity supports, in 2..K (:func:`cluster_count`), so that with
   more branches than groups, groups are not cut apart to fill them (the spare branches start free
   and the search may use them);
4. the search then starts from ``S[i, k] = init.logits + warmup.strength * [k == cluster(i)]`` and
   is free to move tasks where the joint training disagrees.

The cost is N single-task networks for a few epochs (N * epochs branch-epochs, against
K * epochs for the supernet). With ``mlp`` encoders (no norm, or layer norm) and plain linear heads,
the N networks are one module (:class:`~dmtg_nas.engine.stacked.StackedSingles`): each layer's N weight
matrices in one tensor, applied with one batched matrix product; the same networks, initialisation
and updates (up to float rounding), in a fraction of the time of N networks one after the other.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from .backbones import scale_backbone
from .catalog import encoder_entry
from .data import TaskData, make_loader
from .engine.batched import trains_batched
from .engine.networks import plain_network
from .engine.scout import affinity_clusters, cluster_count, spectral_clusters, start_logits
from .engine.stacked import StackedSingles
from .engine.train import train_network
from .schema import SearchSpec

__all__ = [
    "AUTO_SKIPPED",
    "WarmStart",
    "attribution_warm_start",
    "attribution_affinity",
    "cluster_count",
    "proxy_width",
    "warm_start_method",
    "spectral_clusters",
]

_logger = logging.getLogger(__name__)


@dataclass
class WarmStart:
    """The warm start's outcome (recorded in ``metrics.json``)."""

    clusters: list[int]  # per task (spec order): its warm-start branch
    affinity: list[list[float]]  # (N, N)
    seconds: float

    def logits(self, num_branches: int, base: float, strength: float) -> list[list[float]]:
        """Initial logits (N, K): ``base`` everywhere plus ``strength`` on each task's cluster."""
        return start_logits(self.clusters, num_branches, base, strength)

    def to_dict(self) -> dict[str, Any]:
        return {"clusters": self.clusters, "affinity": self.affinity, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> WarmStart:
        return cls(
            [int(c) for c in doc["clusters"]],
            [[float(v) for v in row] for row in doc["affinity"]],
            float(doc["seconds"]),
        )


def _inputs(data: TaskData, samples: int) -> torch.Tensor:
    """Up to ``samples`` training inputs, first rows of the training split (deterministic)."""
    chunks, count = [], 0
    for x, _ in make_loader(data.train, min(samples, 512), shuffle=False, shard=False):
        chunks.append(x)
        count += x.shape[0]
        if count >= samples:
            break
    return torch.cat(chunks)[:samples]


def attribution_affinity(model: torch.nn.Module, tasks: Any, x: torch.Tensor, rank: int) -> torch.Tensor:
    """``A[i, j] = ||U_i^T U_j||_F^2 / rank`` from input-gradient subspaces (see the module docs).

    Args:
        model: a network returning ``{task: output}``; outputs (B, C) or dense (B, C, H, W)
            (dense outputs are averaged over positions).
        x: (B, ...) inputs.
    """
    model.eval()
    x = x.clone().requires_grad_(True)
    outputs = model(x)
    bases = []
    for task in tasks:
        out = outputs[task.name]
        out = out.flatten(2).mean(-1) if out.dim() > 2 else out.reshape(out.shape[0], -1)  # (B, C)
        rows = []
        for c in range(out.shape[1]):
            (g,) = torch.autograd.grad(out[:, c].sum(), x, retain_graph=True)
            rows.append(g.flatten(1))
        grads = torch.cat(rows).detach().double()  # (B*C, D)
        r = min(rank, *grads.shape)
        if grads.shape[1] > 4 * (r + 8):
            _, _, v = torch.svd_lowrank(grads, q=r + 8, niter=4)
            basis = v[:, :r]
        else:
            basis = torch.linalg.svd(grads, full_matrices=False).Vh[:r].T
        bases.append(basis)  # (D, r)
    u = torch.stack(bases)  # (N, D, r)
    affinity = torch.einsum("iar,jas->ijrs", u, u).pow(2).sum((-1, -2)) / u.shape[-1]
    model.train()
    return affinity.float()


# metrics.json's warmup record where ``method: auto`` resolves to none
AUTO_SKIPPED = (
    "auto: off where the merge check's networks do not train batched (batch-norm encoders, image files, dense "
    "tasks); on batch-norm image encoders it was measured to add nothing"
)


def warm_start_method(spec: SearchSpec, data: TaskData) -> str:
    """``warmup.method`` with ``auto`` resolved: ``attribution`` where the merge check's networks
    train batched (:func:`~dmtg_nas.engine.batched.trains_batched`: in-memory vector data, an encoder
    without batch-norm statistics), where the single-task networks cost little and the warm start
    gives the check its start; ``none`` elsewhere.

    Measured on the batch-norm image encoders (docs/method/warm-start.md, "Image encoders"): on
    ``digits`` (real images, K = 3, seeds 0-19) the final model's mean test loss is 0.200 with it
    and 0.171 without (the difference -0.029 +- 0.019; seeds 0-9 alone: +0.002 +- 0.011, and a
    search from a random partition 0.155), at 46% of the run's time; on planted images
    (``image-k3``, seeds 0-5) its clusters are no closer to the planted groups than chance
    (adjusted Rand index 0) and the final model 2% better with it, within one standard error; at
    N = 40 on small images it was 72-87% of the run.
    """
    method = spec.strategy.warmup.method
    if method != "auto":
        return method
    return "attribution" if trains_batched(spec, data) else "none"


def proxy_width(spec: SearchSpec) -> float:
    """The warm start's encoder width as a fraction of the spec's (``warmup.width``; ``auto``: 0.5
    for registered image encoders that have widths to scale, ``convnet`` and ``celeba_resnet``, 1
    for everything else).

    The N single-task networks of an image encoder train one after another and were half of the
    search's time (``digits``: 24 of 48 s of ``dmtg-fast``); at half the channels the warm start
    takes 14 s instead of 24 and the final models are as good in loss (README, "The warm start").
    ``mlp`` networks train stacked and cost little (0.7 s on ``planted6``), and narrowing them loses
    what the affinity needs (``planted6``'s [32, 8] as [16, 4]: the warm start's clusters were the
    planted pairs on 3 of 6 seeds instead of 5); timm models have no width to scale.
    """
    width = spec.strategy.warmup.width
    if width != "auto":
        return float(width)
    entry = encoder_entry(spec.backbone).entry
    return 0.5 if entry.inputs == "image" and entry.scale is not None else 1.0


def attribution_warm_start(
    spec: SearchSpec, data: TaskData, *, progress: bool = False, callbacks: Sequence[pl.Callback] = ()
) -> WarmStart:
    """Single-task networks, attribution affinity and clusters for the spec (see the module docs);
    ``callbacks`` go to the single-task training."""
    cfg = spec.strategy.warmup
    t0 = time.perf_counter()
    pl.seed_everything(spec.strategy.seed + 17, workers=True, verbose=False)
    width = proxy_width(spec)
    backbone = scale_backbone(spec.backbone, width)
    singles = plain_network(
        spec.tasks,
        backbone,
        spec.heads,
        data.input_shape,
        {t: i for i, t in enumerate(spec.task_names)},
        weights=spec.strategy.init.weights,
    )
    strategy = spec.strategy
    if cfg.batch_size is not None:
        strategy = strategy.model_copy(update={"batch_size": cfg.batch_size})
    steps_per_epoch = max(1, math.ceil(len(data.train) / strategy.batch_size))  # type: ignore[arg-type]
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    model: nn.Module = StackedSingles.build(singles) or singles
    train_network(model, data, spec.tasks, strategy, epochs, progress=progress, callbacks=callbacks, stage="warm start")
    model.cpu()
    affinity = attribution_affinity(model, spec.tasks, _inputs(data, cfg.samples), cfg.rank)
    a = affinity.numpy().astype(float)
    clusters = affinity_clusters(a, spec.groups, cfg.clusters, spec.strategy.seed)
    seconds = time.perf_counter() - t0
    _logger.info("warm start (encoder width x%g): clusters %s in %.1f s", width, clusters, seconds)
    return WarmStart(clusters, affinity.tolist(), seconds)
