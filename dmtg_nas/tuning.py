"""Tune K and the temperature schedule with Optuna: one DMTG search per trial.

K (the number of branches) changes the network, so it cannot be learnt inside the one-shot search;
it is tuned in an outer loop together with the Gumbel-softmax temperature schedule and the learning
rates, as declared in the spec's ``tuning:`` section (:class:`~dmtg_nas.config.TuningConfig`).

Each trial runs :func:`~dmtg_nas.pipeline.run.run_search` with the sampled values into
``OUT/trials/trial-NNNN`` (a normal search output: ``dmtg retrain`` accepts it) and is scored on
validation data of the pruned grouped network: ``metrics.totals.val.total_loss`` (plus
``branch_cost`` per branch used). The search's per-epoch ``val_loss`` (the network as it would be
pruned at that epoch) is reported to the trial, so a median or Hyperband pruner stops bad trials.

Storage: ``sqlite:///OUT/study.db`` by default, any database URL Optuna supports (PostgreSQL and
MySQL for many machines), or a journal file (a path ending in ``.log``/``.jsonl``). Workers that
share a storage and a study name share the study; ``trials`` is the study's total. With an RDB
storage every running trial sends a heartbeat; a trial whose worker died is marked FAIL by the
next worker and run again (``retries`` times). A trial whose worker ran on this machine and is gone
(killed with SIGKILL, say) is failed and queued again at once when ``dmtg tune`` starts
(:func:`fail_dead_trials`), without waiting out the heartbeat's grace period; one killed before it
wrote its name into the trial, before the worker stops (a worker does not wait for such trials
when it starts: they may be another worker's first moments). ``--jobs`` workers die with the
process that started them (:func:`die_with_parent`).

Several objectives (``objectives=("val_loss", "branches")``; see :data:`OBJECTIVES`) make the study
multi-objective (every objective minimised, Optuna's TPE sampler, no pruning: Optuna cannot prune
such studies); the report is then the Pareto front (``OUT/pareto.json``, ``OUT/plots/pareto.png``)
instead of one best trial.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl

from .config import SearchSpec, TuningConfig, dump_yaml, load_spec
from .errors import DmtgError, NonFiniteMetricsError
from .progress import Progress
from .registry import user_folders

__all__ = [
    "OBJECTIVES",
    "Param",
    "ReportCallback",
    "StepTimer",
    "TuneResult",
    "TuningConfig",
    "apply_params",
    "create_study",
    "die_with_parent",
    "fail_dead_trials",
    "make_storage",
    "objective_values",
    "pareto_front",
    "parse_objectives",
    "run_trial",
    "search_space",
    "tune",
    "tuning_of",
    "write_pareto",
    "write_report",
]

_logger = logging.getLogger(__name__)

SCORE = "val total loss of the pruned grouped network"
LABEL = "val total loss (pruned network)"  # plots
JOURNAL_SUFFIXES = (".log", ".jsonl", ".journal")

# what a trial can be scored on (all minimised), and the name the study and the report give each
OBJECTIVES = {
    "val_loss": SCORE,
    "branches": "branches used (K of the grouped network)",
    "parameters": "parameters of the grouped network",
    "step_time": "seconds per training step of the search (median)",
}


def parse_objectives(objectives: str | Sequence[str]) -> tuple[str, ...]:
    """``"val_loss,branches"`` (or a sequence) as a checked tuple: ``val_loss`` first, then any of
    the other :data:`OBJECTIVES`, each once."""
    names = tuple(n.strip() for n in objectives.split(",")) if isinstance(objectives, str) else tuple(objectives)
    choices = ", ".join(OBJECTIVES)
    for name in names:
        if name not in OBJECTIVES:
            raise DmtgError(f"unknown objective {name!r}; choose from {choices} (val_loss first)")
    if not names or names[0] != "val_loss":
        raise DmtgError(f"objectives must start with val_loss, got {','.join(names)}; choose from {choices}")
    if len(set(names)) != len(names):
        raise DmtgError(f"objectives name one twice: {','.join(names)}")
    return names


# ----------------------------------------------------------------------------------------------
# The search space (shared by Optuna and the NNI portal)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One tuned value: an integer or log-float range, or a choice."""

    name: str
    kind: str  # "int" | "float" | "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[str, ...] = ()


def tuning_of(spec: SearchSpec) -> TuningConfig:
    """The spec's ``tuning:`` section, or the defaults."""
    return spec.tuning if spec.tuning is not None else TuningConfig()


def search_space(spec: SearchSpec) -> list[Param]:
    """The tuned values for ``spec`` (K, schedule, tau init/final, learning rates)."""
    cfg = tuning_of(spec)
    n = len(spec.tasks)
    k_range = cfg.branches or ([2, min(n, 6)] if n >= 2 else [1, 1])
    params = [Param("branches", "int", k_range[0], k_range[1])]
    if len(cfg.schedules) > 1:
        params.append(Param("schedule", "choice", choices=tuple(cfg.schedules)))
    if cfg.tau_init is not None:
        params.append(Param("tau_init", "float", cfg.tau_init[0], cfg.tau_init[1], log=True))
    if cfg.tau_final is not None and set(cfg.schedules) != {"constant"}:
        params.append(Param("tau_final", "float", cfg.tau_final[0], cfg.tau_final[1], log=True))
    if cfg.lr is not None:
        params.append(Param("lr", "float", cfg.lr[0], cfg.lr[1], log=True))
    if cfg.logits_lr is not None:
        params.append(Param("logits_lr", "float", cfg.logits_lr[0], cfg.logits_lr[1], log=True))
    return params


def apply_params(spec: SearchSpec, params: Mapping[str, Any]) -> SearchSpec:
    """The spec of one trial: ``spec`` with the sampled values (and the per-trial epoch budget)."""
    cfg = tuning_of(spec)
    doc = spec.to_dict()
    strat = doc["strategy"]
    k = params.get("branches", params.get("groups"))  # groups: K's name in studies of earlier versions
    if k is not None:
        doc["branches"] = int(k)
    temp = strat["temperature"]
    schedule = params.get("schedule", cfg.schedules[0] if len(cfg.schedules) == 1 else temp["schedule"])
    temp["schedule"] = str(schedule)
    if "tau_init" in params:
        temp["init"] = float(params["tau_init"])
    if "tau_final" in params and schedule != "constant":
        temp["final"] = float(params["tau_final"])
    if "lr" in params:
        strat["optimizer"]["lr"] = float(params["lr"])
    if "logits_lr" in params:
        strat["optimizer"]["logits_lr"] = float(params["logits_lr"])
    if cfg.epochs is not None:
        strat["epochs"] = cfg.epochs
    return load_spec(doc)


def suggest(trial: optuna.Trial, space: Sequence[Param]) -> dict[str, Any]:
    """Sample ``space`` with an Optuna trial (tau_final only for a non-constant schedule)."""
    values: dict[str, Any] = {}
    for p in space:
        if p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high))
        elif p.kind == "choice":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.name == "tau_final" and values.get("schedule") == "constant":
            continue
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return values


# ----------------------------------------------------------------------------------------------
# One trial
# ----------------------------------------------------------------------------------------------


class ReportCallback(pl.Callback):
    """Calls ``report(epoch, val_loss)`` after every validation of the search; when it returns
    True the search stops at once by raising ``stop()`` (e.g. ``optuna.TrialPruned``)."""

    def __init__(self, report: Callable[[int, float], bool], stop: Callable[[], BaseException]) -> None:
        self.report = report
        self.stop = stop

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get("val_loss")
        if value is None:
            return
        if self.report(trainer.current_epoch + 1, float(value)):
            raise self.stop()


class StepTimer(pl.Callback):
    """The wall time of every training step of the search (forward, backward, optimizer step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seconds.append(time.perf_counter() - self._start)

    @property
    def median(self) -> float:
        """The median step (robust to the first steps' warm-up and to a busy machine); NaN: none."""
        return statistics.median(self.seconds) if self.seconds else math.nan


def objective_values(
    score: float, result: Any, objectives: Sequence[str], step_seconds: float = math.nan
) -> list[float]:
    """The trial's value for each objective: ``val_loss`` is its ``score`` (:func:`score_of`), the
    others read the search's result (``branches``, ``parameters``) or its ``step_seconds``."""
    values = {
        "val_loss": lambda: score,
        "branches": lambda: float(result.metrics["search"]["branches_used"]),
        "parameters": lambda: float(sum(p.numel() for p in result.model.parameters())),
        "step_time": lambda: step_seconds,
    }
    return [values[name]() for name in objectives]


def score_of(spec: SearchSpec, metrics: Mapping[str, Any]) -> float:
    """The trial's score (minimised): validation total loss + branch_cost * branches used."""
    value = float(metrics["totals"]["val"]["total_loss"])
    return value + tuning_of(spec).branch_cost * int(metrics["search"]["branches_used"])


def run_trial(
    spec: SearchSpec,
    params: Mapping[str, Any],
    out_dir: Path,
    *,
    report: Callable[[int, float], bool] | None = None,
    stop: Callable[[], BaseException] = optuna.TrialPruned,
    progress: bool = False,
    callbacks: Sequence[pl.Callback] = (),
) -> tuple[float, Any]:
    """Run one DMTG search with ``params`` (and the extra search ``callbacks``) into ``out_dir``;
    returns (score, SearchResult). (NNI logs a stopped (pruned) search as a failed model; the
    command line keeps NNI's log quiet.)"""
    from .pipeline.run import run_search

    trial_spec = apply_params(spec, params)
    callbacks = [*callbacks, *([ReportCallback(report, stop)] if report is not None else [])]
    result = run_search(trial_spec, out_dir, progress=progress, overwrite=True, callbacks=callbacks)
    return score_of(trial_spec, result.metrics), result


# ----------------------------------------------------------------------------------------------
# Storage and study
# ----------------------------------------------------------------------------------------------


def make_storage(storage: str | None, out_dir: Path, *, heartbeat: int = 60, retries: int = 1) -> Any:
    """An Optuna storage from a URL, a journal file path, or None (``sqlite:///OUT/study.db``).

    RDB storages (SQLite, PostgreSQL, MySQL) get a heartbeat: trials of dead workers are failed
    after ``2 * heartbeat`` seconds and run again up to ``retries`` times.
    """
    if storage is None:
        out_dir.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(out_dir / 'study.db').resolve()}"
    if "://" not in storage:
        path = Path(storage).expanduser()
        if path.suffix in JOURNAL_SUFFIXES:
            from optuna.storages.journal import JournalFileBackend

            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        storage = f"sqlite:///{path.resolve()}"
    storage = _with_driver(storage)
    engine_kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                return optuna.storages.RDBStorage(
                    storage,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=2 * heartbeat,
                    **_retry_callback(retries),
                )
            except ImportError as exc:
                raise DmtgError(f"storage {storage!r} needs a database driver: {exc}") from None
            except Exception as exc:  # sqlalchemy's errors: bad URL, server down, or a race
                if attempt == 3 or ("IntegrityError" not in repr(exc) and "already exists" not in str(exc)):
                    raise DmtgError(f"cannot open storage {storage!r}: {str(exc).splitlines()[0]}") from None
                time.sleep(0.5 + attempt)  # another worker is creating the tables right now
    raise AssertionError("unreachable")


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg (3) to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    import importlib.util

    missing = importlib.util.find_spec("psycopg") is None
    if url.startswith("postgresql://") and missing and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _retry_callback(retries: int) -> dict[str, Any]:
    """RDBStorage's argument that re-queues a dead worker's trial (renamed in Optuna 4.9)."""
    from .quiet import quiet_libraries

    new = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if new is not None:
        with quiet_libraries():  # "... is experimental": the package's own choice, not the user's
            return {"heartbeat_stale_trial_callback": new(max_retry=retries)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=retries)}


def _pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # the first epochs' losses are noisy: no pruning in the first quarter of the budget
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, epochs // 4))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def create_study(
    spec: SearchSpec,
    storage: Any,
    study_name: str | None = None,
    *,
    pruner: optuna.pruners.BasePruner | None = None,
    shared: bool = False,
    objectives: Sequence[str] = ("val_loss",),
) -> optuna.Study:
    """Create the study or load the existing one of that name (resume, or join other workers).

    ``shared``: other workers may use the study at the same time; each worker's sampler then mixes
    its process id into ``tuning.seed``, so that workers do not propose the same values.
    ``objectives``: several make a multi-objective study (all minimised; Optuna's TPE handles
    several objectives; no pruner: Optuna cannot prune them, so ``pruner`` is refused).
    """
    multi = len(objectives) > 1
    if multi and pruner is not None and not isinstance(pruner, optuna.pruners.NopPruner):
        raise DmtgError("Optuna cannot prune a multi-objective study: give no pruner, or one objective")
    cfg = tuning_of(spec)
    epochs = cfg.epochs or spec.strategy.epochs
    seed = cfg.seed + os.getpid() if shared else cfg.seed
    sampler: optuna.samplers.BaseSampler
    if cfg.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name or spec.name,
        directions=["minimize"] * len(objectives),
        sampler=sampler,
        pruner=optuna.pruners.NopPruner() if multi else pruner or _pruner(cfg.pruner, epochs),
        load_if_exists=True,
    )
    if len(study.directions) != len(objectives):  # Optuna loads an existing study as it was created
        raise DmtgError(
            f"study {study.study_name!r} in this storage has {len(study.directions)} objective(s), "
            f"not {len(objectives)}; give another --study, or its objectives"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVES[name] for name in objectives])
    return study


def _scheduled(study: optuna.Study) -> tuple[int, bool]:
    """(trials that count towards the total, whether some wait to be run). A failed trial that
    was re-queued (dead worker) counts once, through its retry."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    counted = sum(1 for t in trials if not (t.state == optuna.trial.TrialState.FAIL and t.number in retried))
    waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
    return counted, waiting


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None when there is none."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else float(proc.create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # another user's live process
        return math.inf


# a worker writes its host and pid into its trial within moments of the trial's start; a RUNNING
# trial without them after this long belongs to a worker killed in between
ORPHAN_SECONDS = 10.0


def _age(trial: optuna.trial.FrozenTrial) -> float:
    """Seconds since the trial started (Optuna records local time)."""
    start = trial.datetime_start
    return (datetime.datetime.now() - start).total_seconds() if start is not None else math.inf


def _is_dead(trial: optuna.trial.FrozenTrial, host: str) -> bool:
    """Whether no worker runs the RUNNING ``trial``: unnamed (no pid) and ``ORPHAN_SECONDS`` old, or
    named by a worker of ``host`` whose process is gone (no process has its pid, or the one that has
    it started at another time). Trials named by other machines' workers are never dead here."""
    if "pid" not in trial.user_attrs:  # unnamed after ORPHAN_SECONDS: no worker runs it
        return _age(trial) >= ORPHAN_SECONDS  # younger: started while we waited
    pid, started = trial.user_attrs.get("pid"), trial.user_attrs.get("started")
    if trial.user_attrs.get("host") != host or not isinstance(pid, int):
        return False
    now = _process_started(pid)
    alive = now is not None and (not isinstance(started, float) or now == math.inf or abs(now - started) < 1.0)
    return not alive


def fail_dead_trials(study: optuna.Study, retries: int, *, wait: bool = True) -> list[int]:
    """Fail the RUNNING trials whose worker ran on this machine and is gone, and queue each again
    (``retries`` times, as the heartbeat does); returns their numbers.

    A worker killed with SIGKILL (or by the OOM killer) leaves its trial RUNNING; the heartbeat fails
    it only after its grace period (and journal storages have none), so a rerun right after the kill
    would count it as running and end one trial short. A worker is gone when no process has its pid,
    or the one that has it started at another time (a reused pid). Trials of other machines are left
    to the heartbeat; live workers of this machine are left alone. A RUNNING trial no worker has
    written its host and pid into (killed between the trial's start and the objective's first line)
    is failed once it is ``ORPHAN_SECONDS`` old, on any machine; younger ones are waited for, or
    with ``wait=False`` left as they are (a worker starting next to another one, whose first trial
    is seconds old, starts its own trials at once and looks again before it stops).
    """
    host = socket.gethostname()
    retry = next(iter(_retry_callback(retries).values()))
    failed = []
    running = (optuna.trial.TrialState.RUNNING,)
    trials = study.get_trials(deepcopy=False, states=running)
    unnamed = [_age(t) for t in trials if "pid" not in t.user_attrs]
    # killed between the trial's start and its first line? wait until the youngest would have named it
    if unnamed and wait:
        time.sleep(min(max(0.0, ORPHAN_SECONDS - min(unnamed)), ORPHAN_SECONDS))
        trials = study.get_trials(deepcopy=False, states=running)
    for trial in trials:
        if not _is_dead(trial, host):
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        except RuntimeError:  # another worker failed it first (UpdateFinishedTrialError)
            continue
        retry(study, study._storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    if failed:
        _logger.warning("trial(s) %s: their worker on this machine is gone; failed and queued again", failed)
    return failed


PARENT_ENV = "DMTG_TUNE_PARENT"


def die_with_parent() -> None:
    """Make this ``--jobs`` worker end when the ``dmtg tune`` that started it ends, however it ends
    (the parent's pid is in ``$DMTG_TUNE_PARENT``): on Linux the kernel sends SIGKILL
    (``prctl(PR_SET_PDEATHSIG)``), elsewhere a thread polls the parent pid every second. A worker
    left running would go on writing into the study and the trial folders of a study being rerun."""
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    else:  # pragma: no cover - not Linux

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(128 + signal.SIGKILL)

        threading.Thread(target=watch, name="dmtg-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the death signal was asked for
        os._exit(128 + signal.SIGKILL)


def _finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=states))


# ----------------------------------------------------------------------------------------------
# The tuning loop
# ----------------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """The outcome of ``tune``: the study and its best trial (also in ``OUT/best.json``)."""

    study: optuna.Study
    best: dict[str, Any] | None
    out_dir: Path
    plots: list[Path]
    pareto: list[dict[str, Any]] | None = None  # several objectives: the front (also OUT/pareto.json)


def _failed(trial: optuna.Trial, exc: Exception) -> float:
    """Record a trial's failure; NaN tells Optuna the trial failed."""
    _logger.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
    trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
    return math.nan


def _objective(
    spec: SearchSpec, out_dir: Path, space: Sequence[Param], objectives: Sequence[str] = ("val_loss",)
) -> Callable[[optuna.Trial], float | list[float]]:
    multi = len(objectives) > 1

    def objective(trial: optuna.Trial) -> float | list[float]:
        # the worker first (fail_dead_trials reads it if this process is killed), then the sampling
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("started", _process_started(os.getpid()))  # tells a reused pid apart
        params = suggest(trial, space)
        run_dir = out_dir / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))

        def report(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        timer = StepTimer()
        try:
            if multi:  # Optuna takes no intermediate values from multi-objective trials
                score, result = run_trial(spec, params, run_dir, callbacks=[timer])
            else:
                score, result = run_trial(spec, params, run_dir, report=report)
        except NonFiniteMetricsError as exc:  # diverged (NaN metrics): this trial fails, not the study
            return _failed(trial, exc)
        except (optuna.TrialPruned, DmtgError):
            raise
        except Exception as exc:  # a crashing search fails this trial, not the study
            return _failed(trial, exc)
        trial.set_user_attr("groups", result.groups)
        trial.set_user_attr("val_total_loss", result.val_loss)
        trial.set_user_attr("test_total_loss", result.test_loss)
        trial.set_user_attr("branches_used", len(result.groups))
        if result.adjusted_rand_index is not None:
            trial.set_user_attr("adjusted_rand_index", result.adjusted_rand_index)
        if not multi:
            return score
        values = objective_values(score, result, objectives, timer.median)
        trial.set_user_attr("objectives", dict(zip(objectives, values, strict=True)))
        return values

    return objective


def _report(progress: Progress | None, study: optuna.Study, total: int) -> None:
    if progress is None:
        return
    if len(study.directions) > 1:
        front = len(study.best_trials)
        progress("tune", min(_finished(study), total), total, f"front {front}" if front else "")
        return
    best = _best_value(study)
    progress("tune", min(_finished(study), total), total, f"best {best:.4f}" if best is not None else "")


def tune(
    spec: SearchSpec,
    out_dir: str | Path,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    trials: int | None = None,
    jobs: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    progress: Progress | None = None,
    report: bool = True,
    objectives: str | Sequence[str] = ("val_loss",),
) -> TuneResult:
    """Tune ``spec``'s K, temperature schedule and learning rates with Optuna.

    Args:
        spec: a validated spec; its ``tuning:`` section (or the defaults) declares the space.
        out_dir: trial run directories (``trials/trial-NNNN``), ``study.db`` by default, the report.
        study_name: the study (default: the spec's name); an existing study is resumed.
        storage: overrides ``tuning.storage`` (URL or journal file path).
        trials: overrides ``tuning.trials``: the study's total number of trials.
        jobs: parallel worker processes on this machine (default: one per GPU, at least 1); each
            worker sees one GPU (``CUDA_VISIBLE_DEVICES``).
        pruner: an Optuna pruner instance (overrides ``tuning.pruner``).
        progress: told the trials done (and the best value) after every trial; the command line
            draws it as a bar.
        report: write ``best.json`` and the plots at the end (several objectives: ``pareto.json``
            and ``plots/pareto.png``).
        objectives: ``val_loss`` alone (the default: one score), or with any of ``branches``,
            ``parameters``, ``step_time`` (:data:`OBJECTIVES`): a multi-objective study, no pruning.
    """
    objectives = parse_objectives(objectives)
    out = Path(out_dir)
    cfg = tuning_of(spec)
    updates: dict[str, Any] = {}
    if storage is not None:
        updates["storage"] = storage
    if trials is not None:
        updates["trials"] = trials
    if updates:
        spec = spec.model_copy(update={"tuning": cfg.model_copy(update=updates)})
        cfg = tuning_of(spec)
    store = make_storage(cfg.storage, out, heartbeat=cfg.heartbeat, retries=cfg.retries)
    # a study in an explicit storage may have other workers (other machines, or --jobs children)
    study = create_study(spec, store, study_name, pruner=pruner, shared=cfg.storage is not None, objectives=objectives)
    # a killed run's trials: failed and queued again, before counting (a trial not yet named may be
    # another worker's first moments: the worker looks at those again before it stops)
    fail_dead_trials(study, cfg.retries, wait=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.yaml").write_text(dump_yaml(spec.to_dict()), encoding="utf-8")
    if jobs is None:
        jobs = _gpu_count()
    progress = progress or None  # False: none
    if jobs > 1:
        _run_workers(spec, out, study, cfg, jobs, progress, objectives)
    else:
        _work(spec, out, study, cfg.trials, progress, objectives, cfg.retries)
    result = TuneResult(study=study, best=None, out_dir=out, plots=[])
    if report and len(objectives) > 1:
        result.pareto, result.plots = write_pareto(study, out, objectives)
    elif report:
        result.best, result.plots = write_report(study, out, spec)
    return result


def _work(
    spec: SearchSpec,
    out: Path,
    study: optuna.Study,
    total: int,
    progress: Progress | None,
    objectives: Sequence[str],
    retries: int,
) -> None:
    """One worker: run trials until the study has ``total`` of them. Before it stops, a trial that
    counts but whose worker died (:func:`fail_dead_trials`, waiting for unnamed ones) is failed and
    queued again (``retries`` times), and the worker goes on with it."""
    space = search_space(spec)
    objective = _objective(spec, out, space, objectives)
    _report(progress, study, total)
    while True:
        counted, waiting = _scheduled(study)
        if counted >= total and not waiting:
            if not fail_dead_trials(study, retries):
                break
            continue  # count again: a retried trial now waits, one failed without a retry left still counts
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=1, gc_after_trial=True)
        _report(progress, study, total)


def _best_value(study: optuna.Study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:
        return None


def _gpu_count() -> int:
    try:
        import torch

        return max(torch.cuda.device_count(), 1)
    except Exception:  # pragma: no cover - a broken CUDA install means CPU
        return 1


def _storage_url(study: optuna.Study, cfg: TuningConfig, out: Path) -> str:
    return cfg.storage or f"sqlite:///{(out / 'study.db').resolve()}"


def _run_workers(
    spec: SearchSpec,
    out: Path,
    study: optuna.Study,
    cfg: TuningConfig,
    jobs: int,
    progress: Progress | None,
    objectives: Sequence[str] = ("val_loss",),
) -> None:
    """``jobs`` worker processes on this machine sharing the study, one GPU each (round robin)."""
    spec_file = out / "tuning.yaml"
    gpus = _gpu_count()
    procs = []
    for i in range(jobs):
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        try:
            import torch

            if torch.cuda.is_available():
                visible = env.get("CUDA_VISIBLE_DEVICES")
                ids = visible.split(",") if visible else [str(g) for g in range(gpus)]
                env["CUDA_VISIBLE_DEVICES"] = ids[i % len(ids)]
        except Exception:  # pragma: no cover
            pass
        cmd = [
            sys.executable,
            "-m",
            "dmtg_nas.cli",
            "tune",
            str(spec_file),
            "--out",
            str(out),
            "--study",
            study.study_name,
            "--storage",
            _storage_url(study, cfg, out),
            "--jobs",
            "1",
            "--objectives",
            ",".join(objectives),
            "--worker",
        ]
        # the workers read OUT/tuning.yaml: user modules next to the original spec stay importable
        env["PYTHONPATH"] = os.pathsep.join([*map(str, user_folders()), *filter(None, [env.get("PYTHONPATH")])])
        log = open(out / f"worker-{i}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    _report(progress, study, cfg.trials)
    try:
        while any(p.poll() is None for p, _ in procs):
            time.sleep(2)
            _report(progress, study, cfg.trials)
    except KeyboardInterrupt:
        for p, _ in procs:
            p.terminate()
        raise
    finally:
        for p, log in procs:
            p.wait()
            log.close()
    bad = [i for i, (p, _) in enumerate(procs) if p.returncode != 0]
    if bad:
        raise DmtgError(f"tuning worker(s) {bad} failed; see {out}/worker-{bad[0]}.log")


# ----------------------------------------------------------------------------------------------
# Report: best values, best grouping, plots
# ----------------------------------------------------------------------------------------------


def write_report(
    study: optuna.Study, out: Path, spec: SearchSpec | None = None
) -> tuple[dict[str, Any] | None, list[Path]]:
    """Write ``best.json`` and ``plots/*.png`` (optimization history, parameter importances,
    score against K); returns the best trial's summary (None when no trial completed)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    counts = {s.name.lower(): 0 for s in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    best: dict[str, Any] | None = None
    if complete:
        trial = study.best_trial
        best = {
            "study": study.study_name,
            "trial": trial.number,
            "value": trial.value,
            "score": SCORE,
            "params": trial.params,
            "groups": trial.user_attrs.get("groups"),
            "run_dir": trial.user_attrs.get("run_dir"),
            "host": trial.user_attrs.get("host"),
            "val_total_loss": trial.user_attrs.get("val_total_loss"),
            "test_total_loss": trial.user_attrs.get("test_total_loss"),
            "trials": counts,
        }
        if "adjusted_rand_index" in trial.user_attrs:
            best["adjusted_rand_index"] = trial.user_attrs["adjusted_rand_index"]
    (out / "best.json").write_text(json.dumps(best or {"trials": counts}, indent=2) + "\n", encoding="utf-8")
    plots = plot_study(study, out / "plots") if complete else []
    return best, plots


def plot_study(study: optuna.Study, folder: Path) -> list[Path]:
    """optimization_history.png, param_importances.png (2+ complete trials) and score_vs_k.png."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(ax: Any, name: str) -> None:
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        fig.set_size_inches(6.4, 4.0)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = ovm.plot_optimization_history(study, target_name=LABEL)
        history.legend(loc="upper right", fontsize=8)
        save(history, "optimization_history.png")
        try:
            importances = ovm.plot_param_importances(study, target_name=LABEL)
            legend = importances.get_legend()
            if legend is not None:
                legend.remove()
            save(importances, "param_importances.png")
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            _logger.info("no parameter importances: %s", exc)
            plt.close("all")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ks = [t.params.get("branches", t.params.get("groups")) for t in complete]
    if any(k is not None for k in ks):
        _, ax = plt.subplots(figsize=(6.4, 4.0))
        pts = [(int(k), float(t.value)) for k, t in zip(ks, complete) if k is not None and t.value is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], alpha=0.7)
        best = study.best_trial
        best_k = best.params.get("branches", best.params.get("groups"))
        if best_k is not None and best.value is not None:
            ax.scatter([best_k], [float(best.value or 0.0)], color="tab:red", marker="*", s=160, label="best")
            ax.legend()
        ax.set_xlabel("K (branches)")
        ax.set_ylabel(LABEL)
        ax.set_title("score against K")
        ax.grid(alpha=0.3)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        save(ax, "score_vs_k.png")
    return written


def pareto_front(study: optuna.Study, objectives: Sequence[str]) -> list[dict[str, Any]]:
    """The study's Pareto front (``study.best_trials``, by trial number): each trial's values by
    objective, params, groups and run folder."""
    return [
        {
            "trial": t.number,
            "values": dict(zip(objectives, t.values, strict=True)),
            "params": t.params,
            "groups": t.user_attrs.get("groups"),
            "run_dir": t.user_attrs.get("run_dir"),
        }
        for t in sorted(study.best_trials, key=lambda t: t.number)
    ]


def write_pareto(study: optuna.Study, out: Path, objectives: Sequence[str]) -> tuple[list[dict[str, Any]], list[Path]]:
    """Write ``pareto.json`` (the front, the objectives, the trial counts) and ``plots/pareto.png``
    (validation loss against each other objective, the front highlighted); returns the front."""
    from .plots import plot_pareto

    counts = {s.name.lower(): 0 for s in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    front = pareto_front(study, objectives)
    doc = {
        "study": study.study_name,
        "objectives": {name: OBJECTIVES[name] for name in objectives},
        "directions": ["minimize"] * len(objectives),
        "front": front,
        "trials": counts,
    }
    (out / "pareto.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return front, []
    points = [(t.number, list(t.values)) for t in complete]
    (out / "plots").mkdir(parents=True, exist_ok=True)
    path = plot_pareto(points, [f["trial"] for f in front], objectives, out / "plots" / "pareto.png")
    return front, [path]
