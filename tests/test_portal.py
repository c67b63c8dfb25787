"""dmtg portal: NNI search spaces, the Optuna-backed NNI tuner, and a real NNI experiment."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unicodedata
from html.parser import HTMLParser
from pathlib import Path
from shutil import which
from typing import Any

import optuna
import psutil
import pytest
import requests
import yaml

import dmtg_nas
from dmtg_nas.cli import main
from dmtg_nas.nni.portal import grouping_space, groups_of, nni_search_space
from dmtg_nas.nni.tuner import OptunaTuner
from dmtg_nas.tuning import search_space

from .conftest import planted_doc

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::1"}


def test_nni_search_space() -> None:
    spec = dmtg_nas.load_spec(planted_doc(tuning={"branches": [1, 3], "schedules": ["constant", "cosine"]}))
    space = nni_search_space(search_space(spec))
    assert space["branches"] == {"_type": "randint", "_value": [1, 4]}  # NNI's upper bound is exclusive
    assert space["schedule"] == {"_type": "choice", "_value": ["constant", "cosine"]}
    assert space["tau_init"] == {"_type": "loguniform", "_value": [0.5, 5.0]}
    assert space["lr"]["_type"] == "loguniform"


def test_grouping_space() -> None:
    spec = dmtg_nas.load_spec(planted_doc())  # 4 tasks, K = 2
    per_task = grouping_space(spec)
    assert per_task["t0"] == {"_type": "choice", "_value": [0, 1]}
    assert groups_of({"t0": 1, "t1": 0, "t2": 1, "t3": 1}, spec.task_names) == [["t1"], ["t0", "t2", "t3"]]
    grid = grouping_space(spec, grid=True)["partition"]["_value"]
    assert len(grid) == len(set(grid)) == 8  # partitions of 4 tasks into at most 2 groups: 1 + 7
    for label in grid:
        groups = groups_of({"partition": label}, spec.task_names)
        assert 1 <= len(groups) <= 2 and sorted(t for g in groups for t in g) == spec.task_names


def test_nni_home_is_restored_after_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While NNI starts, HOME, the Node preload and NNI's default experiment folder point into the run;
    afterwards (also after an error) every one of them is what it was."""
    import nni.tools.nnictl.config_utils as nni_config_utils

    from dmtg_nas.nni.portal import nni_home

    monkeypatch.setenv("NODE_OPTIONS", "--max-old-space-size=64")
    monkeypatch.delenv("DMTG_PORTAL_HOST", raising=False)
    before = (dict(os.environ), nni_config_utils.Experiments.__init__.__defaults__)
    with pytest.raises(RuntimeError, match="boom"), nni_home(tmp_path / "nni") as home:
        assert os.environ["HOME"] == str(home) and home.parent == tmp_path / "nni"
        assert "--require" in os.environ["NODE_OPTIONS"] and os.environ["DMTG_PORTAL_HOST"] == "127.0.0.1"
        assert nni_config_utils.Experiments.__init__.__defaults__ == (str(home / "nni-experiments"),)
        raise RuntimeError("boom")
    assert (dict(os.environ), nni_config_utils.Experiments.__init__.__defaults__) == before
    with nni_home(tmp_path / "nni", loopback=False):  # every interface: no preload
        assert os.environ["NODE_OPTIONS"] == "--max-old-space-size=64" and "DMTG_PORTAL_HOST" not in os.environ
    assert (dict(os.environ), nni_config_utils.Experiments.__init__.__defaults__) == before


def test_optuna_tuner_ask_tell(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    tuner = OptunaTuner(storage=storage, study_name="s", seed=1)
    tuner.update_search_space(
        {
            "groups": {"_type": "randint", "_value": [1, 4]},
            "schedule": {"_type": "choice", "_value": ["constant", "cosine"]},
            "lr": {"_type": "loguniform", "_value": [1e-4, 1e-2]},
        }
    )
    first = tuner.generate_parameters(0)
    second = tuner.generate_parameters(1)
    assert 1 <= first["groups"] <= 3 and isinstance(first["groups"], int)
    assert first["schedule"] in ("constant", "cosine") and 1e-4 <= first["lr"] <= 1e-2
    tuner.receive_trial_result(0, first, {"default": 2.5, "val_total_loss": 2.5})
    tuner.trial_end(0, True)
    tuner.trial_end(1, False)  # crashed: no final result
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert trials[0].value == 2.5 and trials[0].params == first and trials[1].params == second
    assert trials[0].user_attrs["nni_parameter_id"] == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tuner", "tpx"], "unknown tuner 'tpx' (did you mean 'tpe'?)"),
        (["--host", "10.1.2.3"], "--host must be 127.0.0.1 (default) or 0.0.0.0"),
        (["--tuner", "grid"], "--tuner grid needs --space grouping"),
        (["--trials", "0"], "--trials must be >= 1"),
    ],
)
def test_portal_bad_input(extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["portal", "planted", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_portal_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["portal", "planted", "--out", str(tmp_path / "o"), "--port", str(port)]) == 2
    assert f"port {port} is in use" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# A real NNI experiment with its web portal (slow)
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of these processes."""
    found = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        found += [(pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def _non_loopback_addresses() -> list[str]:
    return [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]


def _assert_serves_loopback_only(pids: set[int], port: int) -> None:
    """Something of ``pids`` listens on ``port``, only on loopback addresses, and the port is closed
    to this machine's other addresses."""
    listening = _listening(pids)
    assert any(p == port for _, _, p in listening), listening
    assert all(ip in LOOPBACK for _, ip, _ in listening), listening
    for address in _non_loopback_addresses():
        with socket.socket() as sock:
            sock.settimeout(2)
            assert sock.connect_ex((address, port)) != 0, address


def _trials_with_results(port: int) -> list[dict[str, Any]]:
    base = f"http://127.0.0.1:{port}/api/v1/nni"
    jobs = requests.get(f"{base}/trial-jobs", timeout=10).json()
    metrics = requests.get(f"{base}/metric-data", timeout=10).json()
    for job in jobs:
        mine = [m for m in metrics if m["trialJobId"] == job["trialJobId"]]
        job["intermediate"] = [float(json.loads(m["data"])) for m in mine if m["type"] == "PERIODICAL"]
        final = [m for m in mine if m["type"] == "FINAL"]
        job["final"] = json.loads(json.loads(final[0]["data"])) if final else None
        job["metric_parameter_ids"] = {int(m["parameterId"]) for m in mine}
    return list(jobs)


def _start_portal(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    """``dmtg portal`` on a tiny spec (2 trials) in a process of its own, its files under
    ``tmp_path/run`` and NNI's home ``tmp_path/home`` (checked to stay empty); Ctrl-C reaches it as in
    a terminal, also when the tests run as a background job (which starts children with SIGINT
    ignored)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(planted_doc(tuning={"branches": [1, 3], "trials": 2})))
    home = tmp_path / "home"  # NNI must not write to the user's home
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "HOME": str(home)}
    cmd = [sys.executable, "-m", "dmtg_nas.cli", "portal", str(spec), "--out", str(tmp_path / "run")]
    cmd += ["--port", str(port), "--trials", "2", "--concurrency", "1", *extra]
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _interrupt(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C to the portal; its stdout and stderr once it has stopped (killed after 90 s)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("tuner", ["tpe", "optuna"])
def test_portal_runs_a_real_nni_experiment(tmp_path: Path, tuner: str) -> None:
    out = tmp_path / "run"
    home = tmp_path / "home"
    port = _free_port()
    proc = _start_portal(tmp_path, port, "--tuner", tuner)
    started: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 300
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            started.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})
            try:
                jobs = _trials_with_results(port)
            except requests.RequestException:
                jobs = []
            if len(jobs) == 2 and all(j["final"] is not None and j["status"] == "SUCCEEDED" for j in jobs):
                break
            time.sleep(2)
        # the REST API lists both trials with per-epoch and final results and their values
        assert len(jobs) == 2, jobs
        for job in jobs:
            assert job["status"] == "SUCCEEDED"
            assert len(job["intermediate"]) == 2  # one per search epoch
            assert job["final"]["default"] == pytest.approx(job["final"]["val_total_loss"])
            record = json.loads(job["hyperParameters"][0])
            assert job["metric_parameter_ids"] == {record["parameter_id"]}  # results reach the right trial
            params = record["parameters"]
            assert 1 <= params["branches"] <= 3 and "tau_init" in params
        # the web UI is served
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        info = json.loads((out / "portal.json").read_text())
        assert info["url"] == f"http://127.0.0.1:{port}/"
        # nothing listens on a non-loopback address, and the port is closed to other addresses
        _assert_serves_loopback_only({proc.pid, info["pid"], *started}, port)
        if tuner == "optuna":  # the same trials, with their curves, in the Optuna storage
            study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
            assert sorted(t.value for t in study.trials) == sorted(j["final"]["default"] for j in jobs)
            assert all(len(t.intermediate_values) == 2 for t in study.trials)
    finally:
        stdout, stderr = _interrupt(proc)
    assert proc.returncode == 0, stderr
    assert f"web portal: http://127.0.0.1:{port}/" in stdout
    # no process of the experiment is left
    time.sleep(1)
    left = [p for p in started.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline()[:3] for p in left]
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{port}/", timeout=3)
    assert not (home / "nni-experiments").exists()  # NNI's files are in the run folder, not the home
    assert (out / "nni").is_dir() and len(list((out / "trials").iterdir())) == 2


# ----------------------------------------------------------------------------------------------
# The portal in a real browser: headless Chromium (slow; skipped without a chromium binary)
# ----------------------------------------------------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((path for name in CHROMIUM_NAMES if (path := which(name))), None)
_VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _chromium(profile: Path, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium once with its own profile folder and a 1400x900 window, letting the
    page's scripts run for 10 s of virtual time; its stdout. Chromium runs in a process group of its
    own, ended by its id afterwards (a renderer or crash handler left behind included)."""
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
    cmd += [f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=10000", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return stdout


class _TrialTable(HTMLParser):
    """The rows of NNI's trials table (a Fluent UI DetailsList) in a page's DOM: one dict per row,
    column key (``sequenceId``, ``id``, ``status``, ``latestAccuracy``, ...) -> the text shown
    (hidden tooltips left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self._depth = 0
        self._row: int | None = None  # depth of the open row, cell and hidden element
        self._cell: tuple[int, str] | None = None
        self._hidden: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID_TAGS:
            return
        self._depth += 1
        a = dict(attrs)
        if a.get("data-automationid") == "DetailsRow":
            self._row = self._depth
            self.rows.append({})
        elif self._row is not None and a.get("data-automationid") == "DetailsRowCell":
            self._cell = (self._depth, a.get("data-automation-key") or "")
            self.rows[-1][self._cell[1]] = ""
        if "hidden" in a and self._hidden is None:
            self._hidden = self._depth

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID_TAGS:
            return
        if self._hidden == self._depth:
            self._hidden = None
        if self._cell is not None and self._cell[0] == self._depth:
            self._cell = None
        if self._row == self._depth:
            self._row = None
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None and self._hidden is None:
            self.rows[-1][self._cell[1]] += data


def _visible(text: str) -> str:
    """``text`` with its whitespace collapsed and icons (glyphs of the icon font: private-use
    characters) left out."""
    return " ".join("".join(c for c in text if unicodedata.category(c) != "Co").split())


def _trial_rows(dom: str) -> list[dict[str, str]]:
    table = _TrialTable()
    table.feed(dom)
    return [{key: _visible(value) for key, value in row.items()} for row in table.rows]


def _final_shown(row: dict[str, str]) -> float | None:
    """The final result a row of the table shows (``3.668417 (FINAL)``), or None."""
    match = re.fullmatch(r"([-+0-9.eE]+) \(FINAL\)", row.get("latestAccuracy", ""))
    return float(match.group(1)) if match else None


def _assert_screenshot(path: Path) -> None:
    """A PNG of the window's size with a page on it: not one flat colour."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1400, 900)
        gray = image.convert("L")
        low, high = gray.getextrema()
        assert high - low > 100, (low, high)  # text on a background
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50, len(colours)
        background = max(count for count, _ in colours)
        assert background < 0.95 * image.size[0] * image.size[1]  # something drawn on a fifth of it at least


# one row of the table as Chromium dumps NNI 3.0's web UI (trimmed: classes and styles left out)
_ROW = (
    '<div data-is-focusable="true" id="row66-{i}" role="row" data-automationid="DetailsRow">'
    '<div data-automationid="DetailsRowFields" role="presentation">'
    '<div role="gridcell" data-automationid="DetailsRowCell" data-automation-key="_selected">'
    '<div><input type="checkbox" id="checkbox-69" tabindex="-1"><label for="checkbox-69"><div>'
    '<i data-icon-name="CheckMark" aria-hidden="true"></i></div></label></div></div>'
    '<div role="gridcell" data-automationid="DetailsRowCell" data-automation-key="sequenceId">{i}</div>'
    '<div role="gridcell" data-automationid="DetailsRowCell" data-automation-key="id"><div><div>{id}</div>'
    '<div><button type="button"><span><i data-icon-name="Copy" aria-hidden="true">\ue8c8</i></span></button>'
    '<div role="none"><div hidden="" id="tooltip73">Copied</div></div></div></div></div>'
    '<div role="gridcell" data-automationid="DetailsRowCell" data-automation-key="status">'
    '<span class="{status} commonStyle">{status}</span></div>'
    '<div role="gridcell" data-automationid="DetailsRowCell" data-automation-key="latestAccuracy"><div>'
    '<div role="none"><div class="ellipsis name">{value}</div><div hidden="" id="tooltip74">{value}</div>'
    "</div></div></div></div></div>"
)


def test_the_trial_table_is_read_from_the_dom() -> None:
    """What the browser test reads of the page: each row's visible cells, hidden tooltips left out."""
    header = '<div role="grid"><div role="row" data-automationid="DetailsHeader"><span>Trial No.</span></div>'
    dom = "<html><body>" + header
    dom += _ROW.format(i=0, id="TqKOp", status="SUCCEEDED", value="3.668417 (FINAL)")
    dom += _ROW.format(i=1, id="LkyyI", status="RUNNING", value="4.1 (LATEST)") + "</div></body></html>"
    rows = _trial_rows(dom)
    assert [(r["sequenceId"], r["id"], r["status"], r["latestAccuracy"]) for r in rows] == [
        ("0", "TqKOp", "SUCCEEDED", "3.668417 (FINAL)"),
        ("1", "LkyyI", "RUNNING", "4.1 (LATEST)"),
    ]
    assert [_final_shown(r) for r in rows] == [3.668417, None]


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)"
)
def test_portal_in_a_browser_shows_both_trials_with_their_final_results(tmp_path: Path) -> None:
    """NNI's web UI, loaded in headless Chromium, lists both trials of `dmtg portal` as SUCCEEDED with
    the final results the experiment recorded; its screenshot is a real page. With
    DMTG_PORTAL_SCREENSHOT=FILE.png the screenshot is also saved there (docs/portal.png is made so)."""
    port = _free_port()
    proc = _start_portal(tmp_path, port)
    page = f"http://127.0.0.1:{port}/detail"  # the trials table
    profile = tmp_path / "chromium"
    rows: list[dict[str, str]] = []
    try:
        deadline = time.monotonic() + 360
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            rows = _trial_rows(_chromium(profile, "--dump-dom", page))
            if len(rows) == 2 and all(r.get("status") == "SUCCEEDED" and _final_shown(r) is not None for r in rows):
                break
            time.sleep(2)
        assert len(rows) == 2, rows
        recorded = {job["trialJobId"]: job["final"]["default"] for job in _trials_with_results(port)}
        assert sorted(r["sequenceId"] for r in rows) == ["0", "1"]
        assert {r["id"] for r in rows} == set(recorded)
        for row in rows:
            assert row["status"] == "SUCCEEDED"
            assert _final_shown(row) == pytest.approx(recorded[row["id"]], abs=1e-6)  # shown to 6 decimals

        shot = tmp_path / "portal.png"
        _chromium(profile, "--run-all-compositor-stages-before-draw", f"--screenshot={shot}", page)
        _assert_screenshot(shot)
        keep = os.environ.get("DMTG_PORTAL_SCREENSHOT")
        if keep:
            from PIL import Image

            with Image.open(shot) as image:  # a small PNG for the documentation: 64 colours
                image.convert("RGB").quantize(colors=64).save(keep, optimize=True)
    finally:
        _, stderr = _interrupt(proc)
    assert proc.returncode == 0, stderr


def test_sigterm_stops_the_portal_with_exit_code_143() -> None:
    """SIGTERM while the portal waits stops the experiment and exits with 128 + 15, as a search does;
    the handler in place before is restored."""
    import threading

    from dmtg_nas.nni import portal

    class Experiment:
        _proc = None
        port = None

        def get_status(self) -> str:
            return "RUNNING"

        def save_checkpoint(self) -> None:
            pass

        def stop(self) -> None:
            pass

    before = signal.getsignal(signal.SIGTERM)
    said: list[str] = []
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        code = portal._serve(Experiment(), 1, False, lambda message, main: said.append(message))
    finally:
        timer.cancel()
    assert code == 143
    assert said == ["stopping the experiment..."]
    assert signal.getsignal(signal.SIGTERM) is before
    # a SIGTERM while the experiment starts (before the wait): recorded, then it stops the portal at once
    said.clear()
    term = portal._Termination()
    term.catch()
    os.kill(os.getpid(), signal.SIGTERM)
    assert term.received
    start = time.monotonic()
    code = portal._serve(Experiment(), 1, False, lambda message, main: said.append(message), term)
    assert code == 143 and time.monotonic() - start < 1.5
    assert said == ["stopping the experiment..."]
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_view_reopens_a_finished_experiment_on_loopback_only(tmp_path: Path) -> None:
    """`dmtg portal --view DIR` serves a finished experiment's trials on 127.0.0.1 only (nnictl view
    would listen on every interface); SIGTERM stops it (exit code 143) and every process it started."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(planted_doc(tuning={"groups": [1, 3], "trials": 1})))
    out = tmp_path / "run"
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "HOME": str(home)}
    dmtg = [sys.executable, "-m", "dmtg_nas.cli", "portal"]
    done = subprocess.run(
        [*dmtg, str(spec), "--out", str(out), "--port", str(_free_port()), "--trials", "1", "--stop-when-done"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"reopen it (view only, on 127.0.0.1) with: dmtg portal --view {out}" in done.stderr

    port = _free_port()
    proc = subprocess.Popen(
        [*dmtg, "--view", str(out), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 120
        jobs: list[dict[str, Any]] = []
        while not jobs:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the portal did not come up in 120 s"
            started.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})
            try:
                jobs = _trials_with_results(port)
            except requests.RequestException:
                time.sleep(1)
        assert [j["status"] for j in jobs] == ["SUCCEEDED"] and jobs[0]["final"] is not None
        started.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})
        _assert_serves_loopback_only({proc.pid, *started}, port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stdout.strip().endswith(f"web portal: http://127.0.0.1:{port}/")
    time.sleep(1)
    left = [p for p in started.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline()[:3] for p in left]
    assert not (home / "nni-experiments").exists()


def test_view_needs_a_portal_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["portal", "--view", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"dmtg: error: {tmp_path}: no portal.json (not a dmtg portal run folder)\n"
    assert main(["portal", "planted", "--view", str(tmp_path)]) == 2
    assert "give no SPEC or --stop with it" in capsys.readouterr().err
