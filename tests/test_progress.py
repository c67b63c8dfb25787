"""The progress line of `dmtg tune`, `benchmark` and `suite` (and the stage lines of a search): one
line at a time on stderr naming the stage, with elapsed time and an ETA; stdout holds the result only."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from dmtg_nas.cli import main
from dmtg_nas.progress import Display

from .conftest import ROOT, planted_doc

# "STAGE: UNIT n/N |bar| MM:SS elapsed, ETA MM:SS|?[, NOTE]"
LINE = re.compile(
    r"^(?P<stage>[a-z][\w -]*?): (?P<unit>\w+) (?P<done>\d+)/(?P<total>\d+) \|.{12}\| "
    r"(?P<elapsed>\d\d:\d\d) elapsed, ETA (?P<eta>\?|\d\d:\d\d)(?:, (?P<note>.*))?$"
)
FAST = ["strategy.epochs=1", "strategy.finetune.epochs=0", "strategy.warmup.epochs=2", "strategy.warmup.min_steps=0"]


class Clock:
    """tqdm's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _drawn(text: str) -> list[str]:
    """Every state of the progress lines written to a stream (tqdm redraws a line after ``\\r``)."""
    return [part.strip() for part in re.split(r"[\r\n]", text) if part.strip()]


def _last(stream: io.StringIO) -> re.Match[str]:
    match = LINE.match(_drawn(stream.getvalue())[-1])
    assert match, _drawn(stream.getvalue())[-1]
    return match


def test_the_line_names_the_stage_and_estimates_the_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr("tqdm.std.time", clock)
    stream = io.StringIO()
    show = Display("runs", stream=stream, tick=0)
    show("suite dmtg", 0, 3, "pairs-k3 seed 0")
    line = _last(stream)
    assert (line["stage"], line["unit"], line["done"], line["total"]) == ("suite dmtg", "runs", "0", "3")
    assert (line["elapsed"], line["eta"], line["note"]) == ("00:00", "?", "pairs-k3 seed 0")
    clock.now += 10
    show("suite dmtg", 1, 3, "pairs-k3 seed 1")
    line = _last(stream)
    assert (line["done"], line["elapsed"], line["eta"], line["note"]) == ("1", "00:10", "00:20", "pairs-k3 seed 1")
    clock.now += 30  # the second run took longer: the average time per run is 20 s
    show("suite dmtg", 2, 3, "pairs-k3 seed 2")
    assert (_last(stream)["elapsed"], _last(stream)["eta"]) == ("00:40", "00:20")
    assert "\n" not in stream.getvalue()  # one line, redrawn
    # the next strategy: the finished line stays, the new one starts from zero below it
    clock.now += 20
    show("suite dmtg", 3, 3)
    show("suite tag", 0, 2, "pairs-k3 seed 0")
    finished, current = stream.getvalue().split("\n")
    assert re.match(r"suite dmtg: runs 3/3 \|.{12}\| 01:00 elapsed, ETA 00:00$", _drawn(finished)[-1])
    assert _drawn(current)[-1].startswith("suite tag: runs 0/2 |") and "00:00 elapsed, ETA ?" in current
    show.close()
    assert stream.getvalue().endswith("\n")
    for drawn in _drawn(stream.getvalue()):
        assert LINE.match(drawn), drawn


def test_a_resumed_loop_estimates_from_this_runs_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials done before this process (a resumed study) count as done, not in the time per trial."""
    clock = Clock()
    monkeypatch.setattr("tqdm.std.time", clock)
    stream = io.StringIO()
    show = Display("trials", stream=stream, tick=0)
    show("tune", 5, 10)
    clock.now += 10
    show("tune", 6, 10, "best 0.4321")
    line = _last(stream)
    assert (line["stage"], line["unit"], line["done"], line["eta"], line["note"]) == (
        "tune",
        "trials",
        "6",
        "00:40",
        "best 0.4321",
    )
    show.close()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_elapsed_time_moves_between_units() -> None:
    """A unit (a trial) may take minutes: on a terminal the line is redrawn every second meanwhile;
    in a log file only when something changes."""
    assert Display(stream=io.StringIO()).tick == 0 and Display(stream=_Terminal()).tick == 1.0
    stream = _Terminal()
    show = Display("trials", stream=stream, tick=0.05)
    show("tune", 0, 2)
    drawn = len(_drawn(stream.getvalue()))
    time.sleep(0.5)
    assert len(_drawn(stream.getvalue())) >= drawn + 3  # redrawn without a call
    show.close()
    after = stream.getvalue()
    time.sleep(0.2)
    assert stream.getvalue() == after  # nothing once the line has ended


def test_a_log_record_prints_on_a_line_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warning logged while the line is drawn (about the data, say) is printed above it, whole."""
    from dmtg_nas.cli import _display

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging.StreamHandler(stream)  # the command line's handler: logging.basicConfig on stderr
    logging.root.addHandler(handler)
    try:
        with _display(False, "runs") as show:
            show("benchmark", 0, 2, "naive seed 0")
            logging.getLogger("dmtg_nas.test").warning("a warning about the data")
            show("benchmark", 1, 2, "stl seed 0")
    finally:
        logging.root.removeHandler(handler)
    drawn = _drawn(stream.getvalue())
    assert "a warning about the data" in drawn
    assert all(LINE.match(d) for d in drawn if d != "a warning about the data"), drawn


def _read_terminal(master: int, proc: subprocess.Popen[str], timeout: float) -> str:
    """What a command wrote to the terminal whose master side is ``master``, until it ends."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the command has ended and closed the terminal
                break
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return data.decode("utf-8", "replace")


def test_a_terminal_without_a_size_still_shows_the_line() -> None:
    """A new pseudo-terminal reports 0 columns, where tqdm would draw nothing."""
    master, slave = pty.openpty()
    with open(slave, "w", encoding="utf-8", closefd=True) as stream:
        assert os.get_terminal_size(stream.fileno()).columns == 0
        show = Display("runs", stream=stream, tick=0)
        show("benchmark", 0, 2, "naive seed 0")
        show("benchmark", 1, 2, "stl seed 0")
        show.close()
        stream.flush()
        time.sleep(0.1)
        written = os.read(master, 65536).decode()
    os.close(master)
    assert "benchmark: runs 1/2 |" in written and "elapsed, ETA" in written and "stl seed 0" in written


def _tiny_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmtg_nas import suite
    from dmtg_nas.shapes import Shape

    monkeypatch.setitem(suite.SHAPES, "tiny", Shape("tiny", (2, 1), 2, samples=300))


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def test_suite_draws_one_line_with_the_runs_and_prints_only_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _tiny_shape(monkeypatch)
    out = tmp_path / "suite"
    args = ["suite", "--shapes", "tiny", "--seeds", "2", *_sets(FAST)]
    assert main([*args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == (out / "suite.md").read_text(encoding="utf-8") + f"outputs in {out}\n"
    lines = [LINE.match(drawn) for drawn in _drawn(captured.err)]
    assert lines and all(lines), _drawn(captured.err)
    assert {(m["stage"], m["unit"]) for m in lines if m} == {("suite dmtg", "runs")}  # no search's stage bars
    seen = {(m["stage"], m["unit"], m["done"], m["total"], m["note"]) for m in lines if m}
    assert ("suite dmtg", "runs", "0", "2", "tiny seed 0") in seen
    assert ("suite dmtg", "runs", "1", "2", "tiny seed 1") in seen
    assert ("suite dmtg", "runs", "2", "2", None) in seen
    assert captured.err.count("\n") == 1  # the line ended once, when the runs were done

    # --quiet: the report alone (resumed: every run is done, the report is written again)
    assert main([*args, "--out", str(out), "--resume", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == (out / "suite.md").read_text(encoding="utf-8") + f"outputs in {out}\n"


def test_tune_draws_one_line_with_the_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(planted_doc(tuning={"branches": [1, 2], "trials": 2})))
    out = tmp_path / "tune"
    fast = ["strategy.warmup.epochs=2", "strategy.local_search.enabled=false"]
    assert main(["tune", str(spec), "--out", str(out), *_sets(fast)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["best", "best", "best", "best", "plots:"], captured.out
    header, *drawn = _drawn(captured.err)
    assert header.startswith("tuning tiny: study 'tiny', 2 trials over ")
    matches = [LINE.match(d) for d in drawn]
    assert matches and all(matches), drawn
    assert {(m["stage"], m["unit"]) for m in matches if m} == {("tune", "trials")}  # the trials' searches draw nothing
    done = [(m["stage"], m["unit"], m["done"], m["total"]) for m in matches if m]
    assert ("tune", "trials", "0", "2") in done and done[-1] == ("tune", "trials", "2", "2")
    assert all(m["note"].startswith("best ") for m in matches[1:] if m and m["done"] != "0")

    # --quiet: no line, no header (the study is resumed with its 2 trials done: only the report)
    assert main(["tune", str(spec), "--out", str(out), *_sets(fast), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("best trial ")


def test_benchmark_in_a_terminal(tmp_path: Path) -> None:
    """The real command with stderr on a terminal: the one line (redrawn on the terminal), no warning
    or library banner between its redraws, and stdout the report alone."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(planted_doc()))
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "dmtg_nas.cli", "benchmark", str(spec), "--methods", "naive,stl", "--seeds", "1"]
    cmd += ["--out", str(out), "--set", "strategy.epochs=1"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = str(ROOT)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal of 120 columns
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env, text=True)
    os.close(slave)
    text = _read_terminal(master, proc, 240)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text[-2000:]
    assert stdout == (out / "results.md").read_text(encoding="utf-8") + f"outputs in {out}\n"
    drawn = _drawn(text)
    matches = [LINE.match(d) for d in drawn]
    assert matches and all(matches), drawn
    assert {(m["stage"], m["unit"]) for m in matches if m} == {("benchmark", "runs")}
    seen = {(m["stage"], m["unit"], m["done"], m["total"]) for m in matches if m}
    assert {("benchmark", "runs", "0", "2"), ("benchmark", "runs", "2", "2")} <= seen
    assert any(m["note"] in ("naive seed 0", "stl seed 0") for m in matches if m)


def test_a_log_file_gets_a_progress_line_every_few_seconds_not_every_step() -> None:
    from dmtg_nas.progress import FILE_INTERVAL, draw_interval, stage_line

    log = io.StringIO()  # not a terminal
    assert draw_interval(log) == FILE_INTERVAL >= 5
    line = stage_line("check: round 1", 2000, stream=log)
    for _ in range(2000):
        line.update(1)
    line.close()
    draws = log.getvalue().count("\r") + log.getvalue().count("\n")
    assert draws <= 4  # the first and the last draw (tqdm redraws on close), not 2000
    assert "check: round 1 |############| 00:00 elapsed, ETA 00:00" in log.getvalue()  # the finished line
