"""The one-shot search stage run in NNI: a fresh supernet, NNI's evaluator, the sequential engine."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from nni.nas.execution import SequentialExecutionEngine
from nni.nas.space import RawFormatModelSpace

from ..pipeline.records import SearchRecord
from ..quiet import quiet_libraries
from .evaluator import build_evaluator
from .oneshot import OneShotDMTG
from .space import GroupingSpace

if TYPE_CHECKING:
    from ..pipeline.context import RunContext
    from ..pipeline.search import ProbabilityHistory

__all__ = ["one_shot_search", "search_record"]


def one_shot_search(
    ctx: RunContext, initial_logits: dict[str, list[float]] | None, history: ProbabilityHistory
) -> SearchRecord:
    """Build the spec's supernet and evaluator and run :class:`OneShotDMTG` on them (from the
    checkpoint of a resumed run)."""
    spec, data = ctx.spec, ctx.data
    space = GroupingSpace.from_spec(spec, data.input_shape)
    evaluator = build_evaluator(
        spec,
        data,
        ctx.out,
        progress=ctx.progress,
        callbacks=[history, *ctx.callbacks],
        resume_from=ctx.resume_from,
        interrupts=ctx.interrupts,
        validate=ctx.validate,
    )
    strategy = OneShotDMTG.from_config(spec.strategy, initial_logits)
    with quiet_libraries(), warnings.catch_warnings():
        # the training data order is resumed by RunStateCallback, not by the loader itself
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch")
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message="`training_step` returned `None`")  # nonfinite: skip
        strategy(RawFormatModelSpace(space, evaluator), SequentialExecutionEngine(continue_on_failure=False))
    return search_record(strategy, space)


def search_record(strategy: OneShotDMTG, space: GroupingSpace) -> SearchRecord:
    """What a finished one-shot search found: each task's branch, the probabilities, the skipped batches
    (and with ``keep: best`` the epoch kept)."""
    module = strategy.dmtg_module
    skipped = [{"phase": "search", **r} for r in module.training_module.nonfinite_skips]
    best = getattr(module.training_module, "best_epoch", None)
    kept = best.record() if best is not None else None
    return SearchRecord(
        space,
        module.export(),
        module.probabilities(),
        skipped,
        affinity=module.scout_record,
        alignment=module.alignment_record,
        kept=kept,
    )
