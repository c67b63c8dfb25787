"""A grouping search end to end: the run folder and its lock, then the stages in order.

``run_search(spec, out_dir)`` runs, each stage on the records of the ones before it:

1. warm start (:mod:`.warm`): single-task networks, their affinity, the logits' starting point;
2. one-shot search (:mod:`.search`): the supernet's training (NNI's one-shot machinery);
3. fine-tune (:mod:`.finetune`): the pruned network of the found grouping;
4. merge check (:mod:`.check`): a local search over nearby groupings and the final network;
5. outputs (:mod:`.outputs`): ``metrics.json`` and the other files.

It writes, under ``out_dir``: ``grouping.json`` (groups, assignment, final branch probabilities,
K); ``metrics.json``; ``history.json`` and ``probabilities.png`` (each task's branch probabilities
over the epochs); ``config.yaml`` (the resolved spec); ``model.pt`` (the grouped network);
``checkpoints/last.ckpt`` (the search checkpoint, written atomically at every epoch end and on
SIGINT/SIGTERM, with the one before it as ``last.prev.ckpt``: ``resume=True`` continues from them,
exactly; see :mod:`dmtg_nas.runstate`); ``warmstart.json`` (the warm start's record, reused by a
resumed run); ``.lock`` (held by the run writing into the folder); ``planted_groups.json`` when the
data set knows its best partition; ``logs/metrics.csv``.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..backbones import check_backbone
from ..components import load_data
from ..config import dump_yaml
from ..data import TaskData
from ..errors import DmtgError, NonFiniteMetricsError
from ..hardware import barrier, check_trainer, is_global_zero
from ..nni.search import one_shot_search
from ..quiet import quiet_libraries
from ..runlock import RunLock
from ..runstate import Interrupts, select_checkpoint, spec_identity
from ..schema import SearchSpec
from .check import check_plan, check_stage
from .context import RunContext
from .finetune import finetune_stage
from .outputs import search_result, write_outputs
from .records import SearchResult, Timings
from .search import Searcher, no_supernet, search_stage
from .warm import warm_start_stage

__all__ = ["run_search", "run_stages"]


def run_search(
    spec: SearchSpec,
    out_dir: str | Path | None = None,
    *,
    progress: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    data: TaskData | None = None,
    callbacks: Sequence[pl.Callback] = (),
    searcher: Searcher = one_shot_search,
) -> SearchResult:
    """Search the task grouping of ``spec`` and train the grouped network.

    While it runs, the process holds a lock on ``out_dir`` (a second run into it is refused),
    SIGINT and SIGTERM stop it at the next step with a resumable checkpoint
    (:class:`~dmtg_nas.errors.SearchInterrupted`), a non-finite loss follows
    ``strategy.nonfinite``, and final metrics that are not finite raise
    :class:`~dmtg_nas.errors.NonFiniteMetricsError` (after the outputs are written).

    Args:
        spec: a validated spec (:func:`dmtg_nas.load_spec`).
        out_dir: where to write the outputs (None: write nothing, keep everything in memory).
        progress: a progress bar per stage's training, on stderr (the command line turns them on);
            the libraries' harmless notices are silenced either way (:mod:`dmtg_nas.quiet`).
        resume: continue an interrupted search from ``out_dir/checkpoints/last.ckpt`` (or the
            previous checkpoint when that one is damaged).
        overwrite: allow writing into a non-empty ``out_dir``.
        data: pre-loaded data (default: load the spec's data set).
        callbacks: extra Lightning callbacks for the search.
        searcher: runs the one-shot search (default: NNI's sequential engine on a fresh supernet;
            the :class:`~dmtg_nas.nni.strategy.DMTG` strategy passes its own).

    The search validates after every epoch (``logs/metrics.csv``, the history's ``val_loss``) when
    it writes ``out_dir``, when ``callbacks`` are given (they may read the validation) or with the
    plateau schedule; otherwise nothing would read it and it is skipped (the history is then
    recorded at each epoch's end with ``val_loss`` None; the trained weights are the same).
    """
    out = Path(out_dir) if out_dir is not None else None
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with contextlib.ExitStack() as stack:
        stack.enter_context(quiet_libraries())
        lock = RunLock(out) if out is not None and is_global_zero() else None
        if lock is not None:
            stack.callback(lock.release)
        interrupts = stack.enter_context(Interrupts())
        # Lightning's `deterministic=True` switches the global flag on: leave it as it was found
        stack.callback(torch.use_deterministic_algorithms, deterministic[0], warn_only=deterministic[1])
        t0 = time.perf_counter()
        pl.seed_everything(spec.strategy.seed, workers=True, verbose=False)
        check_backbone(spec.backbone)  # what only the libraries can tell (a timm model), before anything is written
        check_trainer(spec.strategy.trainer)  # Trainer arguments, callbacks, the logger's package
        data = data if data is not None else load_data(spec)  # bad data fails before anything is written
        if out is None:
            resume_from = None
        elif lock is not None:  # the one process that writes (rank 0 of a distributed run) holds the lock
            resume_from = _prepare_out_dir(out, resume, overwrite, lock, spec)
        else:  # the other processes of a distributed run: rank 0 has prepared the folder
            resume_from = out / "checkpoints" / "last.ckpt" if resume else None
        if out is not None and not resume and is_global_zero():
            (out / "config.yaml").write_text(dump_yaml(spec.to_dict()), encoding="utf-8")
        ctx = RunContext(spec, data, out, interrupts, progress, resume_from, callbacks)
        return run_stages(ctx, searcher, t0)
    raise AssertionError("unreachable")  # pragma: no cover


def run_stages(ctx: RunContext, searcher: Searcher = one_shot_search, t0: float | None = None) -> SearchResult:
    """The stages of a search, in order (see the module docstring); writes the outputs when the
    context has an output folder."""
    t0 = time.perf_counter() if t0 is None else t0
    timings = Timings()
    warm, warm_skipped = warm_start_stage(ctx)
    if warm is not None and ctx.resume_from is None:
        timings.warm_start = warm.seconds
    if not ctx.spec.strategy.supernet:  # an ablation: the start goes straight to the fine-tune and the check
        searcher = no_supernet
    search, history = search_stage(ctx, warm, searcher)
    timings.search = search.seconds
    plan = check_plan(ctx.spec, ctx.data, search.sample)  # the fine-tune runs only where no check follows
    tuned = finetune_stage(ctx, search, check_follows=plan.runs)
    timings.finetune = tuned.seconds
    check = check_stage(ctx, search, tuned, warm, plan, t0)
    timings.check, timings.local_search = check.seconds, check.local_seconds
    timings.total = time.perf_counter() - t0
    result = search_result(ctx, warm, search, tuned, check, history.records, timings, warm_skipped)
    if ctx.out is not None and is_global_zero():
        write_outputs(result, ctx.spec, ctx.data)
    barrier()  # a distributed run ends when every process has finished
    check_finite(result)
    return result


def check_finite(result: SearchResult) -> None:
    """Fail a run whose final metrics are not all finite (the outputs stay for inspection): a NaN
    result, e.g. after every batch was skipped as non-finite, must not pass for a finished search."""
    rows = [(split, task, row) for split in ("val", "test") for task, row in result.metrics[split].items()]
    rows += [(split, "", row) for split, row in result.metrics["totals"].items()]
    bad = [
        f"{split} {task + '.' if task else ''}{name}"
        for split, task, row in rows
        for name, value in row.items()
        if not math.isfinite(value)
    ]
    if bad:
        out = str(result.out_dir) if result.out_dir is not None else None
        raise NonFiniteMetricsError(bad, result.metrics["nonfinite"]["skipped_batches"], out)


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool, lock: RunLock, spec: SearchSpec) -> Path | None:
    """Lock and create the run directory; returns the checkpoint to resume from, if any."""
    if resume:
        if not out_dir.is_dir():
            raise DmtgError(f"{out_dir}: nothing to resume (no such folder)")
        lock.acquire()
        return select_checkpoint(out_dir / "checkpoints" / "last.ckpt", spec_identity(spec))
    if out_dir.is_dir():
        lock.acquire()  # a live run in the folder is reported as such
        if any(p.name != lock.path.name for p in out_dir.iterdir()):
            if not overwrite:
                raise DmtgError(
                    f"{out_dir} already exists and is not empty; choose another output folder or overwrite it"
                )
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # never resume into an older run
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    return None
