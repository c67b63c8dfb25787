"""DMTG as the strategy an NNI user passes to ``NasExperiment``: the whole pipeline of a preset.

``NasExperiment(space, evaluator, DMTG.from_preset("dmtg")).run()`` runs what ``dmtg search`` runs
with that strategy, on the space and evaluator from :func:`dmtg_nas.nni.experiment_inputs` (or
:class:`~dmtg_nas.nni.space.GroupingSpace` and :func:`~dmtg_nas.nni.evaluator.build_evaluator`):
the warm start, the one-shot search on NNI's supernet, the fine-tune and the merge check
(:mod:`dmtg_nas.pipeline`), with the same grouping and metrics for the same spec and seed. The
exported model is the final grouped network; :attr:`DMTG.result` holds everything the search
reports. A ``DMTG`` made with its constructor, without a preset, is the relaxation alone
(:class:`~dmtg_nas.nni.oneshot.OneShotDMTG`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nni.nas.space import ModelStatus, RawFormatModelSpace

from ..config import load_strategy
from ..errors import DmtgError
from ..pipeline.context import RunContext
from ..pipeline.records import SearchRecord, SearchResult
from ..pipeline.run import run_search
from ..pipeline.search import ProbabilityHistory
from ..quiet import quiet_libraries
from ..schema import StrategyConfig
from .evaluator import run_inputs
from .oneshot import OneShotDMTG
from .search import search_record
from .space import GroupingSpace

__all__ = ["DMTG"]

_logger = logging.getLogger(__name__)


class DMTG(OneShotDMTG):
    """DMTG for a :class:`~dmtg_nas.nni.space.GroupingSpace`; see the module docstring.

    ``DMTG.from_preset(name)`` / ``DMTG.from_config(config)``: the whole pipeline of that strategy.
    ``DMTG(temperature=..., ...)``: the one-shot relaxation alone (arguments as
    :class:`~dmtg_nas.nni.oneshot.OneShotDMTG`).
    """

    config: StrategyConfig | None = None
    result: SearchResult | None = None

    @classmethod
    def from_config(cls, config: StrategyConfig, initial_logits: dict[str, list[float]] | None = None) -> DMTG:
        """The whole pipeline of ``config`` (warm start, search, fine-tune, merge check)."""
        strategy: DMTG = super().from_config(config, initial_logits)
        strategy.config = config
        return strategy

    @classmethod
    def from_preset(cls, preset: str | Path | Mapping[str, Any] = "dmtg", overrides: Sequence[str] = ()) -> DMTG:
        """The whole pipeline of a strategy preset (a shipped name such as ``dmtg``, a YAML file or a
        mapping), with ``dotted.key=value`` overrides (``epochs=10``)."""
        return cls.from_config(load_strategy(preset, overrides))

    def _run(self) -> None:
        if self.config is None:
            _logger.info("DMTG without a preset: the one-shot relaxation alone (use DMTG.from_preset for the pipeline)")
            with quiet_libraries():
                super()._run()
            return
        evaluator = self.model_space.evaluator  # the caller's evaluator (its Lightning module carries the inputs)
        inputs = run_inputs(evaluator)
        if inputs is None:
            raise DmtgError(
                "DMTG.from_preset runs the whole search and needs the spec and data of the evaluator: build it with "
                "dmtg_nas.nni.build_evaluator(spec, data) (or dmtg_nas.nni.experiment_inputs(spec))"
            )
        spec = inputs.spec.model_copy(update={"strategy": self.config})
        self.result = run_search(spec, inputs.out_dir, data=inputs.data, overwrite=True, searcher=self._search)

    def _search(
        self, ctx: RunContext, initial_logits: dict[str, list[float]] | None, history: ProbabilityHistory
    ) -> SearchRecord:
        """The pipeline's search stage on this strategy's supernet: the weights a fresh space gets at
        this point of the run (the caller built it earlier), the warm start's logits, then NNI's
        one-shot training of the evaluator."""
        space = self.model_space.model_space
        assert isinstance(space, GroupingSpace)
        fresh = GroupingSpace.from_spec(ctx.spec, ctx.data.input_shape)
        missing, unexpected = space.load_state_dict(fresh.state_dict(), strict=False)
        if unexpected or any(not key.endswith("logits") for key in missing):
            raise DmtgError(f"the experiment's space is not the spec's ({len(missing)} missing, {unexpected} extra)")
        k = ctx.spec.groups
        self.set_logits({t: (initial_logits or {}).get(t, [ctx.strategy.init.logits] * k) for t in space.task_names})
        trainer = self._mutated_model_space.evaluator.trainer  # type: ignore[union-attr]
        trainer.callbacks.append(history)
        try:
            super()._run()
        finally:
            trainer.callbacks.remove(history)
        return search_record(self, space)

    def list_models(self, sort: bool = True, limit: int | None = 1) -> Iterator[RawFormatModelSpace]:
        """The final grouped network of the pipeline (``formatter="instance"``) and its grouping
        (``formatter="dict"``); without a preset, the supernet's export as NNI does it."""
        if self.result is None:
            yield from super().list_models(sort=sort, limit=limit)
            return
        model = RawFormatModelSpace(self.result.model, None)
        model.sample = dict(self.result.assignment)
        model.status = ModelStatus.Frozen
        yield model
