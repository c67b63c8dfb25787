"""DMTG in NNI's web portal: an NNI experiment whose trials each run one DMTG search.

NNI's portal starts only for experiments that run trials through its training service (HPO and
multi-trial NAS), never for one-shot strategies such as DMTG. ``dmtg portal`` therefore starts an
NNI ``local`` experiment in which every trial

- ``--space hparams`` (default): runs one DMTG search with the trial's K, temperature schedule and
  learning rates (the spec's ``tuning:`` section, the same space as ``dmtg tune``), or
- ``--space grouping``: trains one fixed grouping (multi-trial search over groupings: random,
  evolution or TPE over each task's branch, or grid over every partition into at most K groups),

and reports the per-epoch validation loss (``nni.report_intermediate_result``) and the final score
(``nni.report_final_result``), so the portal shows trials, curves and hyperparameters.

Tuners: NNI's built-ins and :class:`OptunaTuner`, an NNI custom tuner that drives an Optuna study
by ask/tell in an Optuna storage, so the same trials also show in optuna-dashboard.

NNI's REST server binds every interface without authentication. The portal here listens on
127.0.0.1: the Node process is started with ``NODE_OPTIONS=--require <loopback.js>``, which gives
``listen(port)`` calls without a host the loopback address. ``host="0.0.0.0"`` is an explicit opt-in.

Everything NNI writes (experiment database, logs, trial folders, its experiment list, which NNI
keeps in ``~/nni-experiments``) goes under the run directory. What that takes (``HOME``, the Node
preload, the default folder of NNI's experiment list) is set only while NNI starts, by context
managers that put everything back (:func:`nni_home`). Everything touching NNI's experiment API is in
this module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import SearchSpec, dump_yaml, load_spec
from ..errors import DmtgError, suggest
from ..tuning import Param, search_space, tuning_of
from .tuner import OptunaTuner

__all__ = [
    "OptunaTuner",
    "grouping_space",
    "nni_home",
    "nni_search_space",
    "run_portal",
    "stop_portal",
    "view_portal",
    "TUNERS",
]

_logger = logging.getLogger(__name__)

# NNI tuner names by the name a user types
TUNERS = {"tpe": "TPE", "random": "Random", "evolution": "Evolution", "grid": "GridSearch", "optuna": None}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
ALL_HOSTS = ("0.0.0.0", "::")

_LOOPBACK_JS = """\
// Written by dmtg portal: servers that call listen(port) without a host (NNI's REST server)
// listen on DMTG_PORTAL_HOST (127.0.0.1) instead of every interface.
'use strict';
const net = require('net');
const host = process.env.DMTG_PORTAL_HOST || '127.0.0.1';
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (typeof first === 'number' || (typeof first === 'string' && /^[0-9]+$/.test(first))) {
    if (args.length === 1 || typeof args[1] === 'function') {
      args.splice(1, 0, host);
    }
  } else if (first && typeof first === 'object' && first.host === undefined && first.path === undefined) {
    args[0] = Object.assign({}, first, { host: host });
  }
  return listen.apply(this, args);
};
"""


# ----------------------------------------------------------------------------------------------
# Search spaces in NNI's format
# ----------------------------------------------------------------------------------------------


def nni_search_space(params: Sequence[Param]) -> dict[str, Any]:
    """The tuning space in NNI's search-space format (``randint``, ``loguniform``, ``choice``)."""
    space: dict[str, Any] = {}
    for p in params:
        if p.kind == "int":
            space[p.name] = {"_type": "randint", "_value": [int(p.low), int(p.high) + 1]}
        elif p.kind == "choice":
            space[p.name] = {"_type": "choice", "_value": list(p.choices)}
        elif p.low == p.high:
            space[p.name] = {"_type": "choice", "_value": [p.low]}
        else:
            space[p.name] = {"_type": "loguniform" if p.log else "uniform", "_value": [p.low, p.high]}
    return space


def grouping_space(spec: SearchSpec, grid: bool = False) -> dict[str, Any]:
    """Groupings in NNI's format: each task's branch (``choice`` over K), or, for grid search, one
    ``partition`` choice over every partition into at most K groups (no relabelled duplicates)."""
    if not grid:
        return {t: {"_type": "choice", "_value": list(range(spec.groups))} for t in spec.task_names}
    from ..partitions import set_partitions

    names = spec.task_names
    labels = [
        "|".join(",".join(names[i] for i in block) for block in p) for p in set_partitions(len(names), spec.groups)
    ]
    return {"partition": {"_type": "choice", "_value": labels}}


def groups_of(params: Mapping[str, Any], task_names: Sequence[str]) -> list[list[str]]:
    """The grouping a ``grouping_space`` sample stands for (non-empty groups, in branch order)."""
    if "partition" in params:
        return [block.split(",") for block in str(params["partition"]).split("|")]
    branches = sorted({int(params[t]) for t in task_names})
    return [[t for t in task_names if int(params[t]) == b] for b in branches]


# ----------------------------------------------------------------------------------------------
# Starting, waiting for and stopping the experiment
# ----------------------------------------------------------------------------------------------


def _check_port(port: int, host: str) -> None:
    for addr in {host if host not in ALL_HOSTS else "0.0.0.0", "127.0.0.1"}:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((addr, port))
            except OSError:
                raise DmtgError(f"port {port} is in use; choose another with --port") from None


def _descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def run_portal(
    spec: SearchSpec,
    out_dir: str | Path,
    *,
    trials: int | None = None,
    concurrency: int = 1,
    port: int = 8080,
    host: str = "127.0.0.1",
    tuner: str = "tpe",
    space: str = "hparams",
    storage: str | None = None,
    study_name: str | None = None,
    wait: bool = True,
    stop_when_done: bool = False,
    say: Callable[[str, bool], None] | None = None,
) -> int:
    """Start the NNI experiment, announce the portal URL and (``wait``) serve until Ctrl-C.

    ``say(message, main)`` receives what a user watching should read (``main``: the URL and the
    final summary; otherwise notes); by default messages go to this module's logger.

    Returns the command's exit code. With ``wait=False`` the experiment keeps running detached;
    ``stop_portal(out_dir)`` (``dmtg portal --stop DIR``) stops it.
    """
    from nni.experiment import Experiment, RunMode
    from nni.experiment.config import AlgorithmConfig, CustomAlgorithmConfig

    if tuner not in TUNERS:
        raise DmtgError(f"--tuner: unknown tuner {tuner!r}{suggest(tuner, TUNERS)}; allowed: {', '.join(TUNERS)}")
    if tuner == "grid" and space == "hparams":
        raise DmtgError("--tuner grid needs --space grouping (grid over partitions); use tpe, random or evolution")
    if host in ("localhost", "::1"):
        host = "127.0.0.1"
    if host not in LOOPBACK_HOSTS and host not in ALL_HOSTS:
        raise DmtgError(f"--host must be 127.0.0.1 (default) or 0.0.0.0 (every interface), got {host!r}")
    if not 1 <= port <= 65535:
        raise DmtgError(f"--port must be 1 to 65535, got {port}")
    if concurrency < 1:
        raise DmtgError(f"--concurrency must be >= 1, got {concurrency}")
    cfg = tuning_of(spec)
    trials = trials if trials is not None else cfg.trials
    if trials < 1:
        raise DmtgError(f"--trials must be >= 1, got {trials}")
    _check_port(port, host)

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    nni_dir = out / "nni"
    nni_dir.mkdir(exist_ok=True)
    spec_file = out / "spec.yaml"
    spec_file.write_text(dump_yaml(spec.to_dict()), encoding="utf-8")

    if space == "grouping":
        nni_space = grouping_space(spec, grid=tuner == "grid")
    else:
        nni_space = nni_search_space(search_space(spec))
    study = study_name or spec.name
    optuna_storage = storage or f"sqlite:///{out / 'study.db'}"
    home = os.environ.get("HOME", "")
    trial_cmd = [
        sys.executable,
        "-m",
        "dmtg_nas.nni.portal",
        "trial",
        "--spec",
        str(spec_file),
        "--out",
        str(out / "trials"),
        "--space",
        space,
    ]
    if tuner == "optuna":
        trial_cmd += ["--storage", optuna_storage, "--study", study]
    # NNI's trials inherit the portal's environment; give them the user's HOME back (see below)
    command = f"HOME={shlex.quote(home)} " + " ".join(shlex.quote(c) for c in trial_cmd)

    exp = Experiment("local")
    c = exp.config
    c.experiment_name = f"dmtg {spec.name} ({space})"
    c.trial_command = command
    c.trial_code_directory = str(out)
    c.search_space = nni_space
    c.max_trial_number = trials
    c.trial_concurrency = concurrency
    c.experiment_working_directory = str(nni_dir)
    if tuner == "optuna":
        c.tuner = CustomAlgorithmConfig(
            class_name="dmtg_nas.nni.tuner.OptunaTuner",
            code_directory=str(Path(__file__).resolve().parent.parent.parent),
            class_args={"storage": optuna_storage, "study_name": study, "optimize_mode": "minimize", "seed": cfg.seed},
        )
    else:
        args: dict[str, Any] = {}
        if tuner != "grid":
            args["optimize_mode"] = "minimize"
        if tuner in ("tpe", "random", "evolution"):
            args["seed"] = cfg.seed
        if tuner == "evolution":
            args.pop("seed")
            args["population_size"] = max(2, min(8, trials))
        c.tuner = AlgorithmConfig(name=TUNERS[tuner], class_args=args)
    _gpu_config(c)

    if host not in LOOPBACK_HOSTS:
        _logger.warning(
            "the NNI portal listens on every interface (--host %s) with no authentication: anyone who can reach "
            "port %d can stop the experiment or read trial logs",
            host,
            port,
        )
    term = _Termination()
    if wait:  # a SIGTERM while NNI starts stops the portal once it is up (the web UI answers before start returns)
        term.catch()
    try:
        with nni_home(nni_dir, loopback=host in LOOPBACK_HOSTS):
            exp.start(port, run_mode=RunMode.Background if wait else RunMode.Detach)
    except Exception as exc:
        term.release()
        raise DmtgError(f"NNI could not start the experiment: {str(exc).splitlines()[0]} (logs in {nni_dir})") from None

    url = f"http://{'127.0.0.1' if host in LOOPBACK_HOSTS else socket.gethostname()}:{port}/"
    proc = exp._proc
    info = {"id": exp.id, "port": port, "url": url, "host": host, "pid": proc.pid if proc else None, "space": space}
    (out / "portal.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    say = say or _log_say
    say(f"NNI experiment {exp.id}: {trials} trials ({space}, tuner {tuner}), files in {out}", False)
    say(f"web portal: {url}", True)
    if tuner == "optuna":
        say(f"optuna-dashboard {optuna_storage} --host 127.0.0.1 shows the same trials", False)
    if not wait:
        say(f"running detached; stop it with: dmtg portal --stop {out}", False)
        return 0
    code = _serve(exp, trials, stop_when_done, say, term)
    say(f"reopen it (view only, on 127.0.0.1) with: dmtg portal --view {out}", False)
    return code


@contextlib.contextmanager
def nni_home(nni_dir: Path, *, loopback: bool = True) -> Iterator[Path]:
    """While NNI starts an experiment: its files under ``nni_dir``, its portal on the loopback address.

    NNI keeps its list of experiments in ``~/nni-experiments/.experiment`` (Python side and Node
    side): ``HOME`` points at ``nni_dir/home`` and the default folder of NNI's experiment list
    (``nnictl``'s ``Experiments``) at ``nni_dir/home/nni-experiments``, so nothing is written to the
    user's home; with ``loopback``, the Node process preloads a script that makes ``listen(port)``
    bind 127.0.0.1 (``NODE_OPTIONS``). On exit the environment and NNI's default are restored.
    """
    import nni.tools.nnictl.config_utils as nni_config_utils

    home = nni_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    preload = nni_dir / "loopback.js"
    preload.write_text(_LOOPBACK_JS, encoding="utf-8")
    saved = {k: os.environ.get(k) for k in ("HOME", "NODE_OPTIONS", "DMTG_PORTAL_HOST")}
    init = nni_config_utils.Experiments.__init__
    defaults = init.__defaults__
    os.environ["HOME"] = str(home)
    if loopback:
        os.environ["NODE_OPTIONS"] = f"{saved['NODE_OPTIONS'] or ''} --require {json.dumps(str(preload))}".strip()
        os.environ["DMTG_PORTAL_HOST"] = "127.0.0.1"
    init.__defaults__ = (str(home / "nni-experiments"),)
    try:
        yield home
    finally:
        init.__defaults__ = defaults
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _gpu_config(config: Any) -> None:
    """With GPUs, one per trial (NNI gives concurrent trials different GPUs)."""
    try:
        import torch

        if torch.cuda.is_available():
            config.trial_gpu_number = 1
            config.training_service.use_active_gpu = True
    except Exception:  # pragma: no cover
        pass


def _log_say(message: str, main: bool) -> None:
    _logger.log(logging.WARNING if main else logging.INFO, message)


class _Termination:
    """SIGTERM for a portal that waits: caught (:meth:`catch`) before the experiment starts and only
    recorded while it starts, then a ``KeyboardInterrupt`` once :func:`_serve` waits
    (:meth:`arm`), so that a SIGTERM at any moment stops the experiment with exit code 143."""

    def __init__(self) -> None:
        self.received = False
        self._armed = False
        self._previous: Any = None

    def catch(self) -> None:
        if self._previous is None:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.received = True
        if self._armed:
            raise KeyboardInterrupt

    def arm(self) -> None:
        """From now on SIGTERM interrupts; one received before interrupts at once."""
        self.catch()
        self._armed = True
        if self.received:
            raise KeyboardInterrupt

    def release(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _serve(
    exp: Any,
    trials: int,
    stop_when_done: bool,
    say: Callable[[str, bool], None],
    term: _Termination | None = None,
    *,
    view: bool = False,
) -> int:
    """Wait (the portal stays up) until Ctrl-C or SIGTERM; then stop the experiment and every process
    it started. SIGTERM (also one received while the experiment started, with ``term``) makes the
    exit code 143 (128 + the signal), as it does for ``dmtg search``. ``view``: a reopened finished
    experiment, whose status is not reported again."""
    proc = exp._proc
    started = {p.pid: p for p in _descendants(proc.pid)} if proc else {}
    reported = False
    code = 0
    term = term or _Termination()
    try:
        term.arm()
        while True:
            time.sleep(2)
            if proc is not None:
                started.update({p.pid: p for p in _descendants(proc.pid)})
                if proc.poll() is not None:
                    say("dmtg: the NNI manager exited", False)
                    return 1
            status = "VIEWED" if view else exp.get_status()
            if status in ("DONE", "ERROR") and not reported:
                reported = True
                say(_summary(exp, status), True)
                code = 0 if status == "DONE" else 1
                if stop_when_done:
                    break
                say("the portal stays up; Ctrl-C stops the experiment", False)
    except KeyboardInterrupt:
        say("stopping the experiment...", False)
        code = 128 + signal.SIGTERM if term.received else code
    finally:
        term.release()
        _stop(exp, started)
    return code


def _summary(exp: Any, status: str) -> str:
    try:
        data = exp.export_data()
    except Exception:  # pragma: no cover - the REST server went away
        return f"experiment {status.lower()}"
    scored = []
    for d in data:
        value = d.value.get("default") if isinstance(d.value, dict) else d.value
        if value is not None:
            scored.append((float(value), d.parameter))
    if not scored:
        return f"experiment {status.lower()}: no trial reported a final result"
    value, params = min(scored, key=lambda x: x[0])
    return f"experiment {status.lower()}: {len(scored)} trials; best val total loss {value:.4f} with {params}"


def _stop(exp: Any, started: Mapping[int, Any], timeout: float = 30) -> None:
    """Stop the experiment as NNI does (``DELETE /experiment``), but never wait forever: a manager
    that does not exit in ``timeout`` seconds is ended, and so is every process the experiment
    started that is still alive (by pid)."""
    import atexit

    import psutil
    import requests

    proc = exp._proc
    with contextlib.suppress(Exception):
        exp.save_checkpoint()
    if exp.port is not None:
        with contextlib.suppress(requests.RequestException):
            requests.delete(f"http://127.0.0.1:{exp.port}/api/v1/nni/experiment", timeout=10)
    procs = [p for p in started.values() if p.is_running()]
    if proc is not None:
        with contextlib.suppress(psutil.Error):
            procs.insert(0, psutil.Process(proc.pid))
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
    atexit.unregister(exp.stop)
    exp._proc = None
    exp.port = None
    with contextlib.suppress(Exception):
        exp._stop_logging()


def view_portal(out_dir: str | Path, *, port: int = 8080, say: Callable[[str, bool], None] | None = None) -> int:
    """Reopen the finished experiment of run folder ``out_dir`` in NNI's web portal (view only: no
    trial runs) on 127.0.0.1, until Ctrl-C or SIGTERM (exit code 143).

    NNI's own ``nnictl view`` (and ``Experiment.view``) would bind every interface, without
    authentication; here NNI starts under :func:`nni_home` with the loopback preload, as
    :func:`run_portal` does, and its experiment list is the run folder's.
    """
    from nni.experiment import Experiment, RunMode

    out = Path(out_dir).resolve()
    info_file = out / "portal.json"
    if not info_file.is_file():
        raise DmtgError(f"{out_dir}: no portal.json (not a dmtg portal run folder)")
    exp_id = json.loads(info_file.read_text(encoding="utf-8")).get("id")
    nni_dir = out / "nni"
    _check_port(port, "127.0.0.1")
    say = say or _log_say
    exp = Experiment(None, id=exp_id)
    term = _Termination()
    term.catch()  # a SIGTERM while NNI starts stops the portal once it is up
    try:
        with nni_home(nni_dir, loopback=True), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not exp.has_checkpoint():
                raise DmtgError(f"{out_dir}: experiment {exp_id} is not in {nni_dir} (nothing to view)")
            exp._action = "view"  # Experiment.view(non_blocking=True) without its wait loop
            exp.load_checkpoint()
            exp.start(port=port, debug=False, run_mode=RunMode.Detach)
    except DmtgError:
        term.release()
        raise
    except Exception as exc:
        term.release()
        raise DmtgError(
            f"NNI could not reopen experiment {exp_id}: {str(exc).splitlines()[0]} (logs in {nni_dir})"
        ) from None
    say(f"NNI experiment {exp_id} (view only): files in {out}", False)
    say(f"web portal: http://127.0.0.1:{port}/", True)
    say("Ctrl-C stops the portal", False)
    return _serve(exp, 0, False, say, term, view=True)


def stop_portal(out_dir: str | Path) -> None:
    """Stop a detached experiment started with ``run_portal(..., wait=False)`` in ``out_dir``."""
    import psutil
    import requests

    info_file = Path(out_dir) / "portal.json"
    if not info_file.is_file():
        raise DmtgError(f"{out_dir}: no portal.json (not a dmtg portal run folder)")
    info = json.loads(info_file.read_text(encoding="utf-8"))
    pid = info.get("pid")
    children = _descendants(pid) if pid else []
    with contextlib.suppress(requests.RequestException):
        requests.delete(f"http://127.0.0.1:{info['port']}/api/v1/nni/experiment", timeout=30)
    procs = [psutil.Process(pid)] if pid and psutil.pid_exists(pid) else []
    _, still = psutil.wait_procs(procs + children, timeout=20)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()


# ----------------------------------------------------------------------------------------------
# The trial entry point: python -m dmtg_nas.nni.portal trial --spec SPEC --out DIR --space S
# ----------------------------------------------------------------------------------------------


def _optuna_trial(storage: str | None, study: str | None, parameter_id: Any) -> tuple[Any, int] | None:
    """The Optuna trial that OptunaTuner opened for this NNI trial (to add per-epoch values)."""
    if storage is None or study is None or parameter_id is None:
        return None
    import optuna

    store = optuna.storages.get_storage(storage)
    study_id = store.get_study_id_from_name(study)
    for t in store.get_all_trials(study_id, deepcopy=False):
        if t.user_attrs.get("nni_parameter_id") == int(parameter_id):
            return store, t._trial_id
    return None


def trial_main(argv: Sequence[str] | None = None) -> int:
    """One NNI trial: get the parameters, run, report per-epoch and final results."""
    import nni
    import torch

    parser = argparse.ArgumentParser(prog="python -m dmtg_nas.nni.portal trial")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--space", choices=["hparams", "grouping"], default="hparams")
    parser.add_argument("--storage")
    parser.add_argument("--study")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))

    spec = load_spec(args.spec)
    params = nni.get_next_parameter() or {}
    trial_id = nni.get_trial_id()
    seq = nni.get_sequence_id()
    run_dir = args.out / f"trial-{seq:04d}-{trial_id}"
    record = getattr(nni.trial, "_params", None) or {}
    linked = _optuna_trial(args.storage, args.study, record.get("parameter_id"))
    # The DMTG search runs in NNI's sequential NAS engine, which swaps in its own trial command
    # channel while a model trains: send per-epoch values through the experiment's channel.
    from nni.runtime.env_vars import trial_env_vars
    from nni.runtime.trial_command_channel import get_default_trial_command_channel

    channel = get_default_trial_command_channel()

    def report(epoch: int, value: float) -> bool:
        channel.send_metric(
            parameter_id=record.get("parameter_id"),
            trial_job_id=trial_env_vars.NNI_TRIAL_JOB_ID,
            type="PERIODICAL",
            sequence=epoch - 1,
            value=value,
        )
        if linked is not None:
            store, tid = linked
            store.set_trial_intermediate_value(tid, epoch, value)
        return False

    if args.space == "grouping":
        score, extra = _grouping_trial(spec, params, run_dir, report)
    else:
        from ..tuning import run_trial

        score, result = run_trial(spec, params, run_dir, report=report)
        extra = {
            "val_total_loss": result.val_loss,
            "test_total_loss": result.test_loss,
            "branches_used": len(result.groups),
        }
        if result.adjusted_rand_index is not None:
            extra["adjusted_rand_index"] = result.adjusted_rand_index
        groups = result.groups
        extra_groups = " | ".join(", ".join(g) for g in groups)
        (run_dir / "nni_trial.json").write_text(
            json.dumps({"trial_id": trial_id, "params": params, "groups": extra_groups}) + "\n", encoding="utf-8"
        )
        if linked is not None:
            store, tid = linked
            store.set_trial_user_attr(tid, "run_dir", str(run_dir.resolve()))
            store.set_trial_user_attr(tid, "groups", groups)
    if linked is not None:  # the Optuna trial's value, whatever order NNI delivers events to the tuner
        import optuna

        store, tid = linked
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            store.set_trial_state_values(tid, optuna.trial.TrialState.COMPLETE, [score])
    # not nni.report_final_result: the NAS engine left its own parameter record in nni.trial
    channel.send_metric(
        parameter_id=record.get("parameter_id"),
        trial_job_id=trial_env_vars.NNI_TRIAL_JOB_ID,
        type="FINAL",
        sequence=0,
        value={"default": score, **extra},
    )
    return 0


def _grouping_trial(
    spec: SearchSpec, params: Mapping[str, Any], run_dir: Path, report: Any
) -> tuple[float, dict[str, Any]]:
    """Train one grouping (fresh branches, the search's epoch budget) and score it on validation."""
    from ..components import load_data
    from ..engine.train import train_partition
    from ..pipeline.outputs import write_json
    from ..tuning import ReportCallback

    groups = groups_of(params, spec.task_names)
    data = load_data(spec)
    _, metrics = train_partition(spec, data, groups, callbacks=[ReportCallback(report, RuntimeError)])
    totals = metrics["totals"]
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "metrics.json", {**metrics, "groups": groups})
    score = float(totals["val"]["total_loss"])
    return score, {"test_total_loss": float(totals["test"]["total_loss"]), "groups_count": len(groups)}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "trial":
        raise SystemExit(trial_main(sys.argv[2:]))
    raise SystemExit("usage: python -m dmtg_nas.nni.portal trial --spec SPEC --out DIR [--space hparams|grouping]")
