"""Stage 3: the pruned network of the search's grouping, fine-tuned (``strategy.finetune``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..engine.networks import plain_network
from ..engine.train import train_network
from ..errors import NonFiniteLossError
from ..network import GroupedNetwork
from ..runstate import InterruptCallback, interrupt_message
from .context import RunContext
from .records import FinetuneRecord, SearchRecord, Supernet

__all__ = ["finetune", "finetune_epochs", "finetune_not_run", "finetune_stage", "network_of"]


def network_of(ctx: RunContext, space: Supernet, sample: Mapping[str, int], init: str) -> GroupedNetwork:
    """The grouped network of ``sample``: the search's weights (``search``) or fresh ones (``scratch``)."""
    if init == "scratch":
        spec = ctx.spec
        weights = spec.strategy.init.weights
        return plain_network(spec.tasks, spec.backbone, spec.heads, ctx.data.input_shape, sample, spec.groups, weights)
    return space.freeze(sample)


def finetune(
    ctx: RunContext, net: GroupedNetwork, epochs: int, lr: float | None, stage: str = "fine-tune"
) -> list[dict[str, Any]]:
    """Train ``net`` for ``epochs`` (stopping at a signal); the skipped non-finite batches. ``stage``
    names its progress bar."""
    if epochs <= 0:
        return []
    stop = InterruptCallback(ctx.interrupts, interrupt_message(ctx.out, "fine-tune"))
    skips: list[dict[str, Any]] = []
    try:
        train_network(
            net,
            ctx.data,
            ctx.spec.tasks,
            ctx.strategy,
            epochs,
            lr=lr,
            progress=ctx.progress,
            callbacks=[stop],
            skipped=skips,
            stage=stage,
        )
    except NonFiniteLossError as exc:
        detail = "the fine-tune stopped (the search before it is complete in its checkpoint)"
        raise NonFiniteLossError(exc.tasks, exc.step, exc.epoch, exc.values, detail) from None
    ctx.stop_if_interrupted("evaluation")  # a signal after the fine-tune's last step
    return [{"phase": "fine-tune", **r} for r in skips]


def finetune_epochs(ctx: RunContext, search: SearchRecord) -> int:
    """The fine-tune's epochs: ``finetune.epochs`` and the supernet's a stop once decided left unused."""
    return ctx.strategy.finetune.epochs + search.unused_epochs(ctx.strategy.epochs)


def finetune_not_run(ctx: RunContext, check_follows: bool) -> str | None:
    """Why ``strategy.finetune.enabled`` leaves the fine-tune out of this run (``check_follows``:
    the merge check runs after it), or None where it runs."""
    enabled = ctx.strategy.finetune.enabled
    if enabled is False:
        return "finetune.enabled: false"
    if enabled == "auto" and check_follows:
        return "auto: the merge check's group networks, trained from scratch with the whole budget, are the final model"
    return None


def finetune_stage(ctx: RunContext, search: SearchRecord, check_follows: bool = False) -> FinetuneRecord:
    """Prune the supernet to the search's grouping (``finetune.init``: keep its weights or start
    fresh) and fine-tune it, for ``finetune.epochs`` and the supernet's epochs a stop once decided
    left unused (the network's training budget is the strategy's either way); where
    ``finetune.enabled`` leaves it out (``check_follows``: the merge check runs next), the pruned
    network keeps the search's weights untrained."""
    t0 = time.perf_counter()
    cfg = ctx.strategy.finetune
    reason = finetune_not_run(ctx, check_follows)
    if reason is not None:
        model = network_of(ctx, search.space, search.sample, "search")
        return FinetuneRecord(model, seconds=time.perf_counter() - t0, not_run=reason)
    epochs = finetune_epochs(ctx, search)
    model = network_of(ctx, search.space, search.sample, cfg.init)
    skipped = finetune(ctx, model, epochs, cfg.lr)
    return FinetuneRecord(model, skipped, time.perf_counter() - t0, epochs)
