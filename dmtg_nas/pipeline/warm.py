"""Stage 1: the warm start of the grouping logits (:mod:`dmtg_nas.warmstart`)."""

from __future__ import annotations

import json

from ..hardware import is_global_zero
from ..runstate import InterruptCallback, interrupt_message
from ..warmstart import AUTO_SKIPPED, WarmStart, attribution_warm_start, warm_start_method
from .context import RunContext
from .outputs import write_json

__all__ = ["warm_start_stage"]


def warm_start_stage(ctx: RunContext) -> tuple[WarmStart | None, str | None]:
    """The warm start's clusters and affinity (None when the strategy has none), and where
    ``warmup.method: auto`` left it off, why (:data:`~dmtg_nas.warmstart.AUTO_SKIPPED`; else None).

    It clusters the tasks into K groups: nothing to decide with K = 1 or K >= N. A resumed run
    has its logits in the checkpoint and reads the warm start's record back from ``warmstart.json``.
    """
    spec, out = ctx.spec, ctx.out
    if not 1 < spec.groups < len(spec.tasks):
        return None, None
    method = warm_start_method(spec, ctx.data)
    if method != "attribution":
        return None, AUTO_SKIPPED if spec.strategy.warmup.method == "auto" else None
    if ctx.resume_from is not None:
        if out is not None and (out / "warmstart.json").is_file():
            return WarmStart.from_dict(json.loads((out / "warmstart.json").read_text(encoding="utf-8"))), None
        return None, None
    stop = InterruptCallback(ctx.interrupts, interrupt_message(out, "warm start"))
    warm = attribution_warm_start(spec, ctx.data, progress=ctx.progress, callbacks=[stop])
    if out is not None and is_global_zero():
        write_json(out / "warmstart.json", warm.to_dict())
    return warm, None
