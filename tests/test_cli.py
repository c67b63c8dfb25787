"""The ``dmtg`` command: exit codes, one-line errors, nothing written on bad input, a real run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmtg_nas.cli import main

from .conftest import planted_doc


def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "planted", "--set", "branches=4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: planted: 9 tasks, K=4, dataset planted")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "planted", "--set", "branches=0"], "dmtg: error: --set: branches: input should be greater"),
        (["validate", "plantd"], "did you mean 'planted'?"),
        (["validate", "planted", "--set", "strategy.temperature.schedule=cosin"], "did you mean 'cosine'"),
        (["search", "planted", "--set", "dataset.nosie=0.1"], "unknown key 'nosie' (did you mean 'noise'?)"),
        (["search"], "give a SPEC"),
        (["suite", "--method", "tagg"], "unknown method 'tagg' (did you mean 'tag'?)"),
        (["suite", "--seeds", "5-3"], "--seeds: expected at least one seed"),
        (["suite", "--reference-trainings", "0"], "--reference-trainings must be >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main([*args, "--out", str(tmp_path / "out")] if args[0] == "search" and len(args) > 1 else args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the output folder


def test_list_shows_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "planted" in out and "dmtg" in out and "paper-celeba" in out
    assert "constant, cosine, exponential, linear" in out


def test_help_explains_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["search", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--out", "--set", "--resume", "--overwrite", "--quiet"):
        assert flag in out


def test_search_subprocess_end_to_end(tmp_path: Path) -> None:
    """The installed console script on a small planted spec file: table printed, files written."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(planted_doc()))
    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("dmtg")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [str(exe), "search", str(spec), "--out", str(out), "--quiet", "--set", "strategy.epochs=3"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "group  branch  tasks"
    grouping = json.loads((out / "grouping.json").read_text())
    table_tasks = sorted(
        t.strip() for line in lines[1 : 1 + len(grouping["groups"])] for t in line.split(None, 2)[2].split(",")
    )
    assert table_tasks == ["t0", "t1", "t2", "t3"]
    assert "adjusted Rand index vs planted groups" in proc.stdout
    assert "Traceback" not in proc.stderr

    # --resume refuses extra settings, continues with the saved config otherwise
    bad = subprocess.run(
        [str(exe), "search", "--resume", str(out), "--set", "groups=3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert bad.returncode == 2 and "give no SPEC or --set" in bad.stderr


def test_worker_errors_print_the_original_message_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken image found by a DataLoader worker is still one line naming the file."""
    from .fixtures import write_celeba

    root = write_celeba(tmp_path / "celeba", n=20)
    (root / "img_align_celeba" / "000002.jpg").write_bytes(b"broken")
    doc = {
        "name": "broken",
        "tasks": [{"name": "Smiling", "type": "binary"}],
        "dataset": {"name": "celeba", "root": str(root), "size": 16},
        "backbone": {"name": "convnet", "channels": [4]},
        "groups": 1,
        "strategy": {"_base_": "dmtg", "epochs": 1, "batch_size": 4, "num_workers": 1, "finetune": {"epochs": 0}},
    }
    spec = tmp_path / "broken.yaml"
    spec.write_text(yaml.safe_dump(doc))
    assert main(["search", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"dmtg: error: {root}") and "000002.jpg: cannot read image" in err[-1]
    assert not any("Traceback" in line for line in err)


_NOISE = ("GPU available", "TPU available", "litlogger", "is found to be not a nn.Module", "LeafSpec")


def test_stdout_holds_only_the_result_progress_named_on_stderr(tmp_path: Path) -> None:
    """Without --quiet: --json is JSON alone on stdout, the table is short and bar-free; stderr holds one
    line per stage (``STAGE: epoch E/N |bar| elapsed, ETA``, the ETA of the whole stage, validation on
    the same line), and the libraries' banners are silenced unless --verbose."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(planted_doc()))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}

    def dmtg(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "dmtg_nas.cli", "search", str(spec), *args, "--set", "strategy.finetune.epochs=1"]
        cmd += ["--set", "strategy.finetune.enabled=true"]  # every stage, the fine-tune too
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    proc = dmtg("--out", str(tmp_path / "a"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    grouping = json.loads(proc.stdout)
    assert sorted(t for g in grouping["groups"] for t in g) == ["t0", "t1", "t2", "t3"]
    header, plan, *drawn = [part.strip() for part in re.split(r"[\r\n]", proc.stderr) if part.strip()]
    assert header.startswith("searching tiny:") and plan.startswith("stages:")
    line = re.compile(
        r"^(?P<stage>warm start|search|fine-tune|merge check): epoch (?P<epoch>\d+)/(?P<epochs>\d+)(?:, validation)? "
        r"\|(?P<bar>.{12})\| \d\d:\d\d elapsed, ETA (\?|\d\d:\d\d)(, .*)?$"
    )
    matches = [line.match(d) for d in drawn]
    assert matches and all(matches), [d for d, m in zip(drawn, matches) if not m]
    stages = [m["stage"] for m in matches if m]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [  # one line at a time, in order
        "warm start",
        "search",
        "fine-tune",
        "merge check",  # its batched group networks
    ]
    for stage in ("warm start: epoch 1/", "search: epoch 2/2", "search: epoch 2/2, validation", "fine-tune: epoch 1/1"):
        assert stage in proc.stderr
    assert "\x1b[A" not in proc.stderr and "v_num" not in proc.stderr  # no second bar for validation
    # the search's line counts the batches of both epochs (the ETA is the stage's): half full after the first
    assert any(
        m["stage"] == "search" and m["epoch"] == "2" and m["bar"].strip() != "" and len(m["bar"].rstrip()) == 6
        for m in matches
        if m
    )
    for noise in _NOISE:
        assert noise not in proc.stderr

    proc = dmtg("--out", str(tmp_path / "b"), "--verbose")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("group  branch  tasks\n") and len(proc.stdout) < 1000
    assert not any(bar in proc.stdout for bar in ("\r", "█", "it/s", "epoch"))
    assert "GPU available" in proc.stderr  # --verbose shows the libraries' notices


def test_resume_of_a_finished_run_says_so_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dmtg_nas
    from dmtg_nas.runstate import run_finished

    run = tmp_path / "run"
    result = dmtg_nas.search(dmtg_nas.load_spec(planted_doc()), run)
    assert run_finished(run)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run.rglob("*")) if p.is_file()}
    assert main(["search", "--resume", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == f"{run}: this run has finished; nothing to resume, nothing changed"
    assert captured.out.startswith("group  branch  tasks\n") and f"outputs in {run}" in captured.out
    assert main(["search", "--resume", str(run), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == result.groups
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run.rglob("*")) if p.is_file()}
    assert after == before

    # outputs older than the run's start are an earlier run's (--overwrite, then interrupted): resumable
    config = run / "config.yaml"
    os.utime(config, ns=(config.stat().st_atime_ns, (run / "grouping.json").stat().st_mtime_ns + 10**9))
    assert not run_finished(run)
    (run / "model.pt").unlink()
    assert not run_finished(run)


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("80000", "must be 1 to 65535, got 80000"),
        ("-1", "must be 1 to 65535, got -1"),
        ("0", "must be 1 to 65535, got 0"),
        ("http", "expected a port number, got 'http'"),
    ],
)
def test_portal_port_out_of_range_is_a_usage_error(
    port: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["portal", "planted", "--port", port])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"dmtg portal: error: argument --port: {message}"
    assert list(tmp_path.iterdir()) == []


def test_portal_library_call_refuses_a_port_out_of_range(tmp_path: Path) -> None:
    from dmtg_nas import DmtgError, load_spec
    from dmtg_nas.nni.portal import run_portal

    with pytest.raises(DmtgError, match=r"^--port must be 1 to 65535, got 70000$"):
        run_portal(load_spec("planted"), tmp_path / "out", port=70000, wait=False)
    assert not (tmp_path / "out").exists()


def test_the_search_header_names_every_stage_and_its_budget() -> None:
    from dmtg_nas import load_spec
    from dmtg_nas.cli import stage_plan

    assert stage_plan(load_spec("planted6")) == (
        "warm start (6 single-task networks x 15 epochs, at least 250 steps each; where the merge check's networks "
        "train batched); supernet (up to 40 epochs: "
        "on vector data until the grouping is decided); fine-tune (10 epochs and the supernet's unused ones; where "
        "no merge check follows); merge check (where its networks train batched)"
    )
    always = load_spec("planted6", ["strategy.finetune.enabled=true"])
    assert "fine-tune (10 epochs and the supernet's unused ones); merge check" in stage_plan(always)
    never = load_spec("planted6", ["strategy.finetune.enabled=false"])
    assert "fine-tune" not in stage_plan(never) and "merge check" in stage_plan(never)
    forced = load_spec("planted6", ["strategy.stop_when_decided.enabled=true", "strategy.finetune.epochs=0"])
    expected = "supernet (up to 40 epochs: until the grouping is decided); fine-tune (0 epochs and the"
    assert expected in stage_plan(forced)
    plain = load_spec("planted6", ["strategy=dmtg-plain", "strategy.epochs=3"])
    assert stage_plan(plain) == "supernet (3 epochs); fine-tune (10 epochs)"
    ablation = load_spec(
        "planted6", ["strategy.supernet=false", "strategy.local_search.enabled=false", "strategy.finetune.epochs=0"]
    )
    assert (
        stage_plan(ablation) == "warm start (6 single-task networks x 15 epochs, at least 250 steps each; where the "
        "merge check's networks train batched); no supernet"
    )
    forced_warm = load_spec("planted6", ["strategy.warmup.method=attribution", "strategy.supernet=false"])
    assert stage_plan(forced_warm).startswith(
        "warm start (6 single-task networks x 15 epochs, at least 250 steps each); no"
    )
