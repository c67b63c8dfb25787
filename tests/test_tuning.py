"""dmtg tune: the tuning: section, the search space, a real Optuna study, shared storages."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

import dmtg_nas
from dmtg_nas.cli import main
from dmtg_nas.errors import SpecError
from dmtg_nas.tuning import apply_params, make_storage, search_space, tune

from .conftest import planted_doc

ROOT = Path(__file__).resolve().parent.parent
COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL
RUNNING = optuna.trial.TrialState.RUNNING


def tuned_doc(**tuning: Any) -> dict[str, Any]:
    return planted_doc(tuning={"branches": [1, 3], **tuning})


@pytest.mark.parametrize(
    ("tuning", "message"),
    [
        ({"trails": 3}, "tuning.trails: unknown key 'trails' (did you mean 'trials'?)"),
        ({"lr": [0.1, 0.01]}, "lr must be [low, high] with low <= high"),
        ({"branches": [0, 3]}, "branches must be positive"),
        ({"schedules": ["cosin"]}, "did you mean 'cosine'?"),
        ({"pruner": "hyperbnd"}, "did you mean 'hyperband'?"),
    ],
)
def test_bad_tuning_section(tuning: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=None) as info:
        dmtg_nas.load_spec(planted_doc(tuning=tuning))
    assert message in str(info.value)


def test_default_space_and_trial_spec() -> None:
    spec = dmtg_nas.load_spec("planted")
    assert spec.tuning is None
    space = {p.name: p for p in search_space(spec)}
    assert (space["branches"].low, space["branches"].high) == (2, 6)  # 9 tasks: K in [2, min(N, 6)]
    assert space["schedule"].choices == ("constant", "linear", "exponential", "cosine")
    assert space["tau_init"].log and space["lr"].log
    spec = dmtg_nas.load_spec(planted_doc(tuning={"epochs": 3}))
    trial = apply_params(spec, {"branches": 3, "schedule": "cosine", "tau_init": 4.0, "tau_final": 0.2, "lr": 0.01})
    assert trial.branches == 3 and trial.strategy.epochs == 3 and trial.strategy.optimizer.lr == 0.01
    t = trial.strategy.temperature
    assert (t.schedule, t.init, t.final) == ("cosine", 4.0, 0.2)
    constant = apply_params(spec, {"schedule": "constant", "tau_init": 1.5})
    assert constant.strategy.temperature.final is None


class PruneTrial(optuna.pruners.BasePruner):
    """Prunes one given trial at its first report (a forced pruning)."""

    def __init__(self, number: int) -> None:
        self.number = number

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == self.number


def test_three_trial_study(tmp_path: Path) -> None:
    spec = dmtg_nas.load_spec(tuned_doc(trials=3))
    result = tune(spec, tmp_path / "tune", pruner=PruneTrial(2), progress=False)
    # the storage holds the trials, their values, the pruned one and the best grouping
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.state for t in trials] == [COMPLETE, COMPLETE, PRUNED]
    for t in trials[:2]:
        assert t.value is not None and t.value > 0
        assert sorted(t.intermediate_values) == [1, 2]  # one validation value per epoch
        assert 1 <= t.params["branches"] <= 3
        assert sorted(x for g in t.user_attrs["groups"] for x in g) == ["t0", "t1", "t2", "t3"]
        assert t.value == pytest.approx(t.user_attrs["val_total_loss"])
    assert sorted(trials[2].intermediate_values) == [1]  # stopped after its first epoch
    best = study.best_trial
    assert result.best is not None and result.best["trial"] == best.number
    assert result.best["groups"] == best.user_attrs["groups"]
    assert result.best["params"]["branches"] == best.params["branches"]  # K; "groups" are the found groups
    saved = json.loads((tmp_path / "tune" / "best.json").read_text())
    assert saved["trials"]["complete"] == 2 and saved["trials"]["pruned"] == 1
    assert {p.name for p in result.plots} == {"optimization_history.png", "param_importances.png", "score_vs_k.png"}
    run = Path(best.user_attrs["run_dir"])
    assert json.loads((run / "grouping.json").read_text())["groups"] == best.user_attrs["groups"]
    # the best trial's folder is a normal search output
    assert dmtg_nas.load_spec(run / "config.yaml").branches == best.params["branches"]


@pytest.mark.slow
def test_resume_adds_trials_up_to_the_total(tmp_path: Path) -> None:
    spec = dmtg_nas.load_spec(tuned_doc(trials=1, pruner="none"))
    tune(spec, tmp_path, progress=False, report=False)
    tune(spec, tmp_path, trials=2, progress=False, report=False)
    tune(spec, tmp_path, trials=2, progress=False, report=False)  # nothing left to do
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE]


def test_journal_storage(tmp_path: Path) -> None:
    storage = make_storage(str(tmp_path / "study.log"), tmp_path)
    assert isinstance(storage, optuna.storages.JournalStorage)


@pytest.mark.slow
def test_tune_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], write_yaml: Any) -> None:
    spec = write_yaml("tiny.yaml", tuned_doc(trials=2, pruner="none"))
    out = tmp_path / "out"
    assert main(["tune", str(spec), "--out", str(out), "--quiet", "--study", "s1", "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "best trial" in text and "best groups:" in text and "dmtg retrain accepts it" in text
    assert "best values: branches=" in text
    assert (out / "plots" / "score_vs_k.png").is_file()
    best = json.loads((out / "best.json").read_text())
    assert best["study"] == "s1"
    assert main(["retrain", best["run_dir"], "--epochs", "1", "--quiet"]) == 0


def test_tune_bad_input_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], write_yaml: Any) -> None:
    spec = write_yaml("tiny.yaml", tuned_doc())
    assert main(["tune", str(spec), "--set", "tuning.sampler=tp", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "tuning.sampler: bad value 'tp' (did you mean 'tpe'?)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    bad = ["tune", str(spec), "--storage", "postgresql://nobody@127.0.0.1:1/none", "--out", str(tmp_path / "p"), "-q"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmtg: error: cannot open storage") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()


# ----------------------------------------------------------------------------------------------
# Several workers sharing one study (slow: real processes)
# ----------------------------------------------------------------------------------------------


# A worker process imports the package, then waits until every worker has (its own file written,
# all of them present) before it runs `dmtg tune`: one worker's slower start (importing torch on a
# busy machine) cannot let the other run the whole study alone.
_STARTING = """
import sys, time
from pathlib import Path
from dmtg_nas.cli import main
folder, me, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(folder / me).touch()
deadline = time.monotonic() + 120
while len(list(folder.iterdir())) < count and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(main(sys.argv[4:]))
"""


def _worker(spec: Path, out: Path, storage: str, trials: int, ready: Path, workers: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", _STARTING, str(ready), out.name, str(workers)]
    cmd += ["tune", str(spec), "--out", str(out), "--storage", storage]
    cmd += ["--study", "shared", "--trials", str(trials), "--jobs", "1", "--worker"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _check_shared_study(storage: str, outs: list[Path], trials: int) -> None:
    """No trial lost (every trial finished with a value and an output folder) or run twice (each
    trial number has exactly one output folder, in one worker's folder)."""
    study = optuna.load_study(study_name="shared", storage=storage)
    finished = study.get_trials()
    # concurrent workers may each start one trial past the total, never fewer than the total
    assert trials <= len(finished) <= trials + len(outs) - 1
    assert all(t.state == COMPLETE and t.value is not None for t in finished), [t.state for t in finished]
    numbers = [t.number for t in finished]
    assert numbers == list(range(len(finished)))
    folders = [p for out in outs for p in (out / "trials").glob("trial-*")]
    assert sorted(p.name for p in folders) == [f"trial-{n:04d}" for n in numbers]  # each run exactly once
    for t in finished:
        run = Path(t.user_attrs["run_dir"])
        assert (run / "metrics.json").is_file()
        assert json.loads((run / "metrics.json").read_text())["totals"]["val"]["total_loss"] == pytest.approx(
            t.user_attrs["val_total_loss"]
        )
    pids = [t.user_attrs["pid"] for t in finished]
    assert len(set(pids)) == len(outs), pids  # both workers took trials


def _run_workers(tmp_path: Path, storage: str, trials: int) -> list[Path]:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tuned_doc(pruner="none")))
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [_worker(spec, out, storage, trials, ready, len(outs)) for out in outs]
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output[-3000:]
    return outs


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    _check_shared_study(storage, _run_workers(tmp_path, storage, 6), 6)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path: Path, postgres_url: str) -> None:
    _check_shared_study(postgres_url, _run_workers(tmp_path, postgres_url, 6), 6)


@pytest.mark.slow
def test_dead_workers_trial_is_failed_and_run_again(tmp_path: Path) -> None:
    spec = dmtg_nas.load_spec(tuned_doc(trials=2, pruner="none", heartbeat=1, retries=1))
    storage = make_storage(None, tmp_path, heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="tiny", direction="minimize")
    dead = study.ask({"branches": optuna.distributions.IntDistribution(1, 3)})  # a worker that then died
    storage.record_heartbeat(dead._trial_id)
    time.sleep(3.5)  # past the grace period (2 x heartbeat; SQLite keeps whole seconds)
    tune(spec, tmp_path, progress=False, report=False)
    trials = study.get_trials()
    assert trials[0].state == FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert (
        len(retry) == 1 and retry[0].state == COMPLETE and retry[0].params["branches"] == trials[0].params["branches"]
    )
    assert sum(t.state == COMPLETE for t in trials) == 2  # the dead trial did not block the study


def test_a_trial_whose_worker_died_before_writing_its_name_is_failed_after_a_short_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed between the trial's start and the objective's first line leaves a RUNNING
    trial without host or pid: failed (and queued again) once it is ORPHAN_SECONDS old, while a
    live worker's trial is left alone."""
    from dmtg_nas import tuning

    monkeypatch.setattr(tuning, "ORPHAN_SECONDS", 1.0)
    storage = make_storage(None, tmp_path, heartbeat=60)
    study = optuna.create_study(storage=storage, study_name="tiny", direction="minimize")
    dist = {"branches": optuna.distributions.IntDistribution(1, 3)}
    orphan = study.ask(dist)  # no worker ever wrote its name into it
    alive = study.ask(dist)
    alive.set_user_attr("host", socket.gethostname())
    alive.set_user_attr("pid", os.getpid())
    alive.set_user_attr("started", tuning._process_started(os.getpid()))
    started = time.monotonic()
    assert tuning.fail_dead_trials(study, retries=1) == [orphan.number]
    assert time.monotonic() - started >= 0.5  # it waited for the trial to be a second old
    trials = study.get_trials()
    assert trials[orphan.number].state == FAIL and trials[alive.number].state == RUNNING
    queued = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(queued) == 1 and queued[0].state == optuna.trial.TrialState.WAITING


# ----------------------------------------------------------------------------------------------
# A real PostgreSQL server on 127.0.0.1 (Debian's postgresql package; .ci/run installs it)
# ----------------------------------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """Start a throw-away PostgreSQL server on a free 127.0.0.1 port; stop it afterwards."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (install Debian's postgresql package; .ci/run does)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install -e '.[dev]')")
    folder = Path(tempfile.mkdtemp(prefix="dmtg-pg-"))  # under /tmp: reachable by the server's user
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        os.chown(folder, 65534, 65534)
        prefix = ["runuser", "-u", "nobody", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = folder / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120, cwd=folder)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "dmtg", "--auth=trust", "-E", "UTF8")
    opts = f"-h 127.0.0.1 -p {port} -k {folder}"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(folder / "server.log"), "-w", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dmtg", "tune")
        yield f"postgresql+psycopg2://dmtg@127.0.0.1:{port}/tune"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_a_worker_starts_at_once_next_to_a_trial_not_yet_named_and_fails_it_before_it_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RUNNING trial without host or pid may be another worker's first moments: a worker starting
    next to it does not wait (with two workers started together, the first one's wait let the other
    run the whole study); if it is still unnamed when the study is done, it is an orphan, failed,
    queued again and run before the worker stops."""
    from dmtg_nas import tuning

    monkeypatch.setattr(tuning, "ORPHAN_SECONDS", 3.0)
    spec = dmtg_nas.load_spec(tuned_doc(trials=2, pruner="none", retries=1))
    storage = make_storage(None, tmp_path)
    study = optuna.create_study(storage=storage, study_name="tiny", direction="minimize")
    orphan = study.ask({"branches": optuna.distributions.IntDistribution(1, 3)})  # never named
    starts: list[float] = []
    run_trial = tuning.run_trial

    def timed(*args: Any, **kwargs: Any) -> Any:
        starts.append(time.monotonic())
        return run_trial(*args, **kwargs)

    monkeypatch.setattr(tuning, "run_trial", timed)
    began = time.monotonic()
    assert tuning.fail_dead_trials(study, retries=1, wait=False) == []  # too young: left alone, no wait
    assert time.monotonic() - began < 1.0
    tune(spec, tmp_path, study_name="tiny", progress=False, report=False)
    assert starts[0] - began < 2.5  # its first trial started before the orphan was old enough to fail
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert trials[orphan.number].state == FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state == COMPLETE
    assert sum(t.state == COMPLETE for t in trials) == 2 and len(starts) == 2


@pytest.mark.parametrize("error", ["nonfinite", "spec"])
def test_a_trial_with_non_finite_metrics_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """A diverged trial (its run fails on NaN metrics) is a failed trial; a user error still ends the study."""
    import dmtg_nas.tuning as tuning
    from dmtg_nas.errors import NonFiniteMetricsError

    def run_trial(*args: Any, **kwargs: Any) -> Any:
        raise NonFiniteMetricsError(["val t0.loss"]) if error == "nonfinite" else SpecError("bad")

    monkeypatch.setattr(tuning, "run_trial", run_trial)
    spec = dmtg_nas.load_spec(planted_doc())
    objective = tuning._objective(spec, tmp_path, search_space(spec))
    trial = optuna.create_study().ask()
    if error == "spec":
        with pytest.raises(SpecError):
            objective(trial)
        return
    assert math.isnan(objective(trial))  # Optuna records the trial as failed
    assert trial.user_attrs["error"] == (
        "NonFiniteMetricsError: the final metrics are not finite (NaN or inf): val t0.loss"
    )


@pytest.mark.slow
def test_sigkilled_tune_leaves_no_worker_and_a_rerun_completes_the_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dmtg tune --jobs 2` killed with SIGKILL while its workers run trials: the workers die with it
    (none is left writing into the study), and a rerun at once fails the killed trials, runs them
    again and ends with --trials COMPLETE trials (the heartbeat's grace period is not waited out)."""
    from dmtg_nas.tuning import _process_started

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tuned_doc(pruner="none")))
    out = tmp_path / "tune"
    cmd = [sys.executable, "-m", "dmtg_nas.cli", "tune", str(spec), "--out", str(out), "--trials", "2", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, "--jobs", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    storage = f"sqlite:///{out / 'study.db'}"
    try:
        deadline = time.monotonic() + 300
        running: list[Any] = []
        while not running:
            assert proc.poll() is None, "dmtg tune ended before a trial started"
            assert time.monotonic() < deadline, "no trial started in 300 s"
            time.sleep(0.2)
            with contextlib.suppress(Exception):  # the study may not exist yet
                study = optuna.load_study(study_name="tiny", storage=storage)
                running = [t for t in study.get_trials() if t.state == RUNNING]
                if not all("pid" in t.user_attrs for t in running):
                    running = []  # a trial being started: its worker is not recorded yet
        os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers must not outlive it
        proc.wait()
        workers = {t.user_attrs["pid"] for t in running}
        assert proc.pid not in workers
        deadline = time.monotonic() + 5  # the kernel kills them at once; a trial would take longer
        while any(_process_started(pid) is not None for pid in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived dmtg tune"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # only this test's process group
    killed = [
        t.number for t in optuna.load_study(study_name="tiny", storage=storage).get_trials() if t.state == RUNNING
    ]
    assert killed and all(n in killed for n in (t.number for t in running))
    assert main([*cmd[3:], "--jobs", "1"]) == 0
    capsys.readouterr()
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert sum(t.state == COMPLETE for t in trials) == 2
    assert all(trials[n].state == FAIL for n in killed)
    retried = {t.system_attrs.get("failed_trial") for t in trials if t.state == COMPLETE}
    assert set(killed) <= retried  # each killed trial was run again
    assert all(t.state in (COMPLETE, FAIL) for t in trials)


# ----------------------------------------------------------------------------------------------
# Several objectives: a multi-objective study and its Pareto front
# ----------------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def _front_table(text: str) -> dict[int, list[float]]:
    """The printed front: trial number -> objective values, from the rows under the header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["trial"]) + 1
    rows = {}
    for line in lines[start:]:
        if line.startswith("front:"):
            break
        cells = line.split()
        rows[int(cells[0])] = [float(c) for c in cells[1:3]]
    return rows


def test_pareto_study(tmp_path: Path, capsys: pytest.CaptureFixture[str], write_yaml: Any) -> None:
    spec = write_yaml("tiny.yaml", tuned_doc(trials=3))  # tuning.pruner median: not used with two objectives
    out = tmp_path / "out"
    assert main(["tune", str(spec), "--out", str(out), "--objectives", "val_loss,branches", "--jobs", "1"]) == 0
    captured = capsys.readouterr()
    assert "objectives (minimised): val_loss, branches; no pruning; tuning.pruner median is not used" in captured.err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.directions) == 2 and study.metric_names == [
        "val total loss of the pruned grouped network",
        "branches used (K of the grouped network)",
    ]
    assert [t.state for t in study.trials] == [COMPLETE] * 3
    for t in study.trials:
        assert t.values[0] == pytest.approx(t.user_attrs["val_total_loss"])
        assert t.values[1] == len(t.user_attrs["groups"]) and not t.intermediate_values
    front = {t.number: list(t.values) for t in study.best_trials}
    assert front and not (out / "best.json").exists()
    printed = _front_table(captured.out)
    assert sorted(printed) == sorted(front)
    for number, values in printed.items():
        assert values == pytest.approx(front[number], rel=1e-5)
    saved = json.loads((out / "pareto.json").read_text())
    assert list(saved["objectives"]) == ["val_loss", "branches"] and saved["trials"]["complete"] == 3
    assert {f["trial"]: [f["values"]["val_loss"], f["values"]["branches"]] for f in saved["front"]} == front
    png = out / "plots" / "pareto.png"
    assert png.read_bytes()[:8] == PNG
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 100
    assert f"plots: {png}" in captured.out


def test_parameters_and_step_time_objectives(tmp_path: Path) -> None:
    spec = dmtg_nas.load_spec(tuned_doc(trials=2, pruner="none"))
    result = tune(spec, tmp_path, progress=False, objectives="val_loss,parameters,step_time")
    assert len(result.study.directions) == 3 and result.pareto
    for t in result.study.trials:
        loss, parameters, step = t.values
        model = dmtg_nas.load_model(t.user_attrs["run_dir"])  # the final grouped network of the trial
        assert parameters == sum(p.numel() for p in model.parameters()) > 0
        assert 0 < step < 5 and loss == pytest.approx(t.user_attrs["val_total_loss"])
    assert [p.name for p in result.plots] == ["pareto.png"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--objectives", "val_loss,flops"],
            "unknown objective 'flops'; choose from val_loss, branches, parameters, step_time (val_loss first)",
        ),
        (["--objectives", "branches"], "objectives must start with val_loss, got branches"),
        (
            ["--objectives", "val_loss,branches", "--pruner", "median"],
            "--pruner median: Optuna cannot prune a multi-objective study; use --pruner none or one objective",
        ),
    ],
)
def test_bad_objectives_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write_yaml: Any, argv: list[str], message: str
) -> None:
    spec = write_yaml("tiny.yaml", tuned_doc())
    assert main(["tune", str(spec), "--out", str(tmp_path / "o"), "-q", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dmtg: error: {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_multi_objective_study_refuses_a_pruner_and_a_single_objective_study() -> None:
    from dmtg_nas.errors import DmtgError
    from dmtg_nas.tuning import create_study

    spec = dmtg_nas.load_spec(tuned_doc())
    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(DmtgError, match="cannot prune a multi-objective study"):
        create_study(spec, storage, objectives=("val_loss", "branches"), pruner=optuna.pruners.MedianPruner())
    create_study(spec, storage, "s")
    with pytest.raises(DmtgError, match="study 's' in this storage has 1 objective"):
        create_study(spec, storage, "s", objectives=("val_loss", "branches"))
