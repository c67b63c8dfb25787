"""Stage 2: the one-shot search of the grouping (the supernet's training).

The search itself runs in NNI (:func:`dmtg_nas.nni.search.one_shot_search`, or, inside an NNI
experiment, the :class:`~dmtg_nas.nni.strategy.DMTG` strategy's own supernet); this stage gives it
the warm start's logits, records the probabilities over the epochs and times it, and with
``strategy.polish`` polishes the relaxation's argmax on the run's affinity (the warm start's, or the
affinity scout's).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
import torch

from ..data import TaskData
from ..engine.batched import trains_batched
from ..engine.scout import polish_assignment, start_logits
from ..errors import NonFiniteLossError
from ..schema import SearchSpec
from ..warmstart import WarmStart
from .check import check_plan
from .context import RunContext
from .finetune import finetune_epochs, finetune_not_run
from .records import SearchRecord

__all__ = ["ProbabilityHistory", "Searcher", "decided", "no_supernet", "polish", "search_stage", "stops_when_decided"]


def decided(records: Sequence[Mapping[str, Any]], patience: int) -> bool:
    """Whether the grouping is decided at the last of ``records`` (the history's, epoch 0 the start):
    over the last ``patience`` epochs every task's most probable branch stayed the same, its
    probability is not lower than ``patience`` epochs before, and it is at least twice the next
    branch's. A task still on its way to another branch, or one whose branch is losing ground, keeps
    the search going; so does a start that is still about uniform."""
    if len(records) <= patience:
        return False
    window = [r["probabilities"] for r in records[-(patience + 1) :]]
    for task, last in window[-1].items():
        top = int(np.argmax(last))
        if any(int(np.argmax(p[task])) != top for p in window[:-1]) or last[top] < window[0][task][top]:
            return False
        if len(last) > 1 and last[top] < 2 * max(v for k, v in enumerate(last) if k != top):
            return False
    return True


def stops_when_decided(spec: SearchSpec, data: TaskData) -> bool:
    """Whether the search ends once the grouping is decided (``strategy.stop_when_decided``): ``auto``
    where the merge check's group networks train batched (in-memory vector data, an encoder without
    batch norm). Measured there: the same result where the check runs, at less time, and a better
    model where it does not; with batch-norm image encoders a pruned epoch costs about a supernet
    epoch, and the digits images' model was worse (validation loss higher in 6 of 6 seeds)."""
    enabled = spec.strategy.stop_when_decided.enabled
    return trains_batched(spec, data) if enabled == "auto" else bool(enabled)


class ProbabilityHistory(pl.Callback):
    """Records every task's branch probabilities (and tau, val loss) at the start and each epoch end.

    With ``validated`` (the search validates each epoch) a record is taken after the epoch's
    validation, with its ``val_loss``; else at the end of the epoch's training, ``val_loss`` None.
    With ``patience`` (``strategy.stop_when_decided``) the training stops after the first record at
    which the grouping is :func:`decided` (``decided_epoch``), and a resumed search that had stopped
    does not train on.
    """

    def __init__(self, validated: bool = True, patience: int | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.validated = validated
        self.patience = patience
        self.decided_epoch: int | None = None

    def _stop_if_decided(self, trainer: pl.Trainer) -> None:
        if self.patience is not None and decided(self.records, self.patience):
            self.decided_epoch = int(self.records[-1]["epoch"])
            trainer.should_stop = True

    def _record(self, trainer: pl.Trainer, module: Any, epoch: int) -> None:
        val = trainer.callback_metrics.get("val_loss")
        self.records.append(
            {
                "epoch": epoch,
                "tau": float(getattr(module, "current_tau", float("nan"))),
                "val_loss": float(val) if val is not None else None,
                "probabilities": module.probabilities(),
            }
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not self.records:
            self._record(trainer, pl_module, 0)
        self._stop_if_decided(trainer)  # a resumed search that had stopped

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # after the module's epoch-end logging: callback_metrics hold this epoch's val_loss
        # (and the record is in the epoch's checkpoint, which ModelCheckpoint writes after this)
        if self.validated and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._record(trainer, pl_module, trainer.current_epoch + 1)
            self._stop_if_decided(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not self.validated:
            self._record(trainer, pl_module, trainer.current_epoch + 1)
            self._stop_if_decided(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict.get("records", []))


class Searcher(Protocol):
    """Runs the one-shot search: ``initial_logits`` (``{task: K values}``, None: uniform) start the
    logits, ``history`` goes to the search's Lightning callbacks."""

    def __call__(
        self, ctx: RunContext, initial_logits: dict[str, list[float]] | None, history: ProbabilityHistory
    ) -> SearchRecord: ...


def search_stage(
    ctx: RunContext, warm: WarmStart | None, searcher: Searcher
) -> tuple[SearchRecord, ProbabilityHistory]:
    """Run the search from ``strategy.init.groups`` where given, else from the warm start's logits
    (a resumed run has its own in the checkpoint)."""
    spec = ctx.spec
    ctx.seed()  # the supernet starts from the same weights whatever ran before it
    initial = None
    init = spec.strategy.init
    if init.groups is not None and ctx.resume_from is None:  # a given start, before the warm start's
        given = {name: g for g, group in enumerate(init.groups) for name in group}  # unlisted tasks: uniform
        initial = dict(zip(given, start_logits(list(given.values()), spec.groups, init.logits, init.strength)))
    elif warm is not None and ctx.resume_from is None:
        rows = warm.logits(spec.groups, init.logits, spec.strategy.warmup.strength)
        initial = dict(zip(spec.task_names, rows))
    patience = spec.strategy.stop_when_decided.patience if stops_when_decided(spec, ctx.data) else None
    history = ProbabilityHistory(validated=ctx.validate, patience=patience)
    t0 = time.perf_counter()
    try:
        record = searcher(ctx, initial, history)
    except NonFiniteLossError as exc:
        hint = "strategy.nonfinite: skip skips such batches; strategy.gradient_clip may help"
        detail = f"the search stopped: {_last_good(ctx.out)} ({hint})"
        raise NonFiniteLossError(exc.tasks, exc.step, exc.epoch, exc.values, detail) from None
    affinity = (
        record.affinity["affinity"] if record.affinity is not None else warm.affinity if warm is not None else None
    )
    if spec.strategy.polish and affinity is not None:
        polish(record, spec.task_names, affinity, spec.groups)
    record.seconds = time.perf_counter() - t0
    record.decided_epoch = history.decided_epoch
    if ctx.interrupts.signum is not None:  # a signal after the search's last step
        ctx.stop_if_interrupted(_next_phase(ctx, record))
    return record, history


def _next_phase(ctx: RunContext, record: SearchRecord) -> str:
    """The stage after the search (a signal's message names it)."""
    follows = check_plan(ctx.spec, ctx.data, record.sample).runs
    if finetune_epochs(ctx, record) > 0 and finetune_not_run(ctx, follows) is None:
        return "fine-tune"
    return "merge check" if follows else "evaluation"


def no_supernet(
    ctx: RunContext, initial_logits: dict[str, list[float]] | None, history: ProbabilityHistory
) -> SearchRecord:
    """The searcher of ``strategy.supernet: false`` (an ablation): no supernet is trained; each task
    takes the branch of its largest starting logit (the warm start's cluster, or ``init.groups``;
    branch 0 where the start is uniform), and the fine-tune and the check go on from that grouping
    with the untrained supernet's weights."""
    from ..nni.space import GroupingSpace

    spec = ctx.spec
    space = GroupingSpace.from_spec(spec, ctx.data.input_shape)
    k, rows = spec.groups, dict(initial_logits or {})
    uniform = [spec.strategy.init.logits] * k
    logits = {name: torch.tensor([float(v) for v in rows.get(name, uniform)]) for name in spec.task_names}
    sample = {name: int(row.argmax()) for name, row in logits.items()}
    probabilities = {name: torch.softmax(row, 0).tolist() for name, row in logits.items()}
    return SearchRecord(space, sample, probabilities)


def polish(record: SearchRecord, names: Sequence[str], affinity: Sequence[Sequence[float]], branches: int) -> None:
    """Polish the record's grouping on ``affinity`` (:func:`~dmtg_nas.engine.scout.polish_assignment`):
    its sample moves, and each moved task's probabilities of its old and new branch are swapped."""
    old = [int(record.sample[name]) for name in names]
    new, moves = polish_assignment(old, np.asarray(affinity, dtype=float), branches)
    for name, a, b in zip(names, old, new):
        if a != b:
            row = list(record.probabilities[name])
            row[a], row[b] = row[b], row[a]
            record.probabilities[name] = row
    record.sample = dict(zip(names, new))
    record.polish = {"relaxed": old, "moves": [{**m, "tasks": [names[i] for i in m["tasks"]]} for m in moves]}


def _last_good(out: Path | None) -> str:
    ckpt = out / "checkpoints" / "last.ckpt" if out is not None else None
    if ckpt is None or not ckpt.is_file():
        return "no checkpoint was written yet"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    return f"the last good checkpoint is kept: {ckpt} (epoch {saved['epoch']}, step {saved['global_step']})"
