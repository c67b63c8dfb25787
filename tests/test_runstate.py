"""Run state: exact resumption, atomic checkpoints, interruption, the run lock, determinism, non-finite losses."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import yaml

import dmtg_nas
from dmtg_nas import DmtgError
from dmtg_nas.cli import main
from dmtg_nas.errors import NonFiniteLossError, RunLockedError, SearchInterrupted
from dmtg_nas.runlock import RunLock
from dmtg_nas.runstate import AtomicCheckpointIO, Interrupts, previous_path, select_checkpoint

from .conftest import planted_doc


def small_doc(epochs: int = 3, **strategy: Any) -> dict[str, Any]:
    """4 planted tasks, dropout in the encoder (so the RNG state matters), no warm start."""
    doc = planted_doc()
    doc["backbone"] = {"name": "mlp", "hidden": [8, 3], "dropout": 0.1}
    doc["strategy"] = {
        "_base_": "dmtg-plain",
        "epochs": epochs,
        "batch_size": 64,
        "finetune": {"epochs": 1, "init": "scratch"},
        "lr_schedule": {"name": "cosine"},
        **strategy,
    }
    return doc


def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json without wall-clock times and the resumed flag."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("seconds") and k != "resumed"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(metrics)  # type: ignore[no-any-return]


class SignalAtStep(pl.Callback):
    """Sends this process ``signum`` after optimisation step ``step`` (as a user or a scheduler would)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def steps_per_epoch(spec: Any) -> int:
    from dmtg_nas.components import load_data

    return math.ceil(len(load_data(spec).train) / spec.strategy.batch_size)


# ---------------------------------------------------------------------------- resumption


@pytest.mark.parametrize("where", ["mid-epoch", "last batch"])
def test_interrupt_then_resume_equals_uninterrupted(tmp_path: Path, where: str) -> None:
    """SIGINT in the middle of epoch 1 (or during epoch 0's last batch: the stop waits for the epoch's
    validation): a checkpoint is saved there, and the resumed run ends with the same grouping,
    probabilities, history and metrics, bit for bit, as an uninterrupted run (dropout in the encoder,
    a cosine learning-rate schedule and a fine-tune from fresh weights: the RNG states, scheduler
    and data order must all be resumed)."""
    handler = signal.getsignal(signal.SIGINT)  # the default one, or SIG_IGN in a background job
    spec = dmtg_nas.load_spec(small_doc())
    full = dmtg_nas.search(spec, tmp_path / "full", progress=False)
    per_epoch = steps_per_epoch(spec)
    step, epoch, at = (per_epoch + 2, 1, "epoch 1") if where == "mid-epoch" else (per_epoch, 0, "the end of epoch 0")
    with pytest.raises(SearchInterrupted, match=rf"SIGINT: checkpoint saved at {at}, step {step} .*--resume") as info:
        dmtg_nas.search(spec, tmp_path / "cut", progress=False, callbacks=[SignalAtStep(step, signal.SIGINT)])
    assert info.value.signum == signal.SIGINT
    saved = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (epoch, step)
    assert not (tmp_path / "cut/grouping.json").exists()
    resumed = dmtg_nas.search(spec, tmp_path / "cut", resume=True, progress=False)
    assert resumed.groups == full.groups
    assert resumed.probabilities == full.probabilities
    assert resumed.history == full.history
    assert comparable(resumed.metrics) == comparable(full.metrics)
    assert resumed.metrics["search"]["resumed"] is True
    # the handlers are back to what they were
    assert signal.getsignal(signal.SIGINT) is handler


def test_resuming_a_finished_search_repeats_only_the_fine_tune(tmp_path: Path) -> None:
    """What a kill during the fine-tune leaves: the search's final checkpoint. The resumed run trains
    nothing more in the search and repeats the fine-tune (fresh weights, dropout) with the saved RNG
    state: the same result."""
    spec = dmtg_nas.load_spec(small_doc(epochs=2))
    full = dmtg_nas.search(spec, tmp_path / "run", progress=False)
    again = dmtg_nas.search(spec, tmp_path / "run", resume=True, progress=False)
    assert again.history == full.history
    assert comparable(again.metrics) == comparable(full.metrics)


def test_a_signal_during_the_merge_check_stops_it_at_the_next_step_and_resume_repeats_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while the check's group networks train: the run stops at the next training step
    (not after the whole check, which may take many rounds), writes no result, says what to do;
    resumed, it repeats the fine-tune and the check from the search's checkpoint: the uninterrupted
    result."""
    from dmtg_nas.engine import batched

    doc = planted_doc()
    doc["strategy"].update(epochs=2, finetune={"epochs": 1}, local_search={"enabled": True})
    spec = dmtg_nas.load_spec(doc)
    full = dmtg_nas.search(spec, tmp_path / "full", progress=False)
    assert full.metrics["local_search"]["networks_trained"] > 0
    steps: list[int] = []
    real = batched.train_stacked

    def signalling(*args: Any, **kwargs: Any) -> Any:
        stop = kwargs["stop"]

        def counting() -> bool:
            steps.append(1)
            if len(steps) == 3:  # the signal arrives during the third step
                os.kill(os.getpid(), signal.SIGTERM)
            return bool(stop())

        return real(*args, **{**kwargs, "stop": counting})

    monkeypatch.setattr(batched, "train_stacked", signalling)
    expected = r"SIGTERM during the merge check: the finished search is in .*--resume"
    with pytest.raises(SearchInterrupted, match=expected) as info:
        dmtg_nas.search(spec, tmp_path / "cut", progress=False)
    assert info.value.signum == signal.SIGTERM
    assert len(steps) == 3  # stopped after the step the signal came in
    assert not (tmp_path / "cut/grouping.json").exists()
    monkeypatch.undo()
    resumed = dmtg_nas.search(spec, tmp_path / "cut", resume=True, progress=False)
    assert resumed.groups == full.groups
    assert comparable(resumed.metrics) == comparable(full.metrics)


@pytest.mark.parametrize(("finetune", "phase"), [("auto", "merge check"), ("true", "fine-tune")])
def test_a_signal_right_after_the_search_names_the_stage_that_comes_next(
    tmp_path: Path, finetune: str, phase: str
) -> None:
    """SIGTERM as the supernet's training ends: the run stops before the next stage and names it,
    the merge check where no fine-tune runs before it (``finetune.enabled: auto``)."""
    from dmtg_nas.nni.search import one_shot_search
    from dmtg_nas.pipeline.run import run_search

    doc = planted_doc()
    doc["strategy"].update(epochs=1, finetune={"epochs": 1}, local_search={"enabled": True})
    spec = dmtg_nas.load_spec(doc, [f"strategy.finetune.enabled={finetune}"])

    def searcher(*args: Any) -> Any:
        record = one_shot_search(*args)
        os.kill(os.getpid(), signal.SIGTERM)
        return record

    with pytest.raises(SearchInterrupted, match=f"SIGTERM during the {phase}: the finished search is in"):
        run_search(spec, tmp_path / "run", searcher=searcher)
    assert not (tmp_path / "run/grouping.json").exists()


def test_a_checkpoint_of_the_earlier_supernet_layout_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = dmtg_nas.load_spec(small_doc(epochs=1, finetune={"epochs": 0}))
    out = tmp_path / "run"
    dmtg_nas.search(spec, out, progress=False)
    last = out / "checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    keys = [k for k in ckpt["state_dict"] if k.endswith("logits")]
    assert len(keys) == 1 and keys[0].endswith("routers.logits")  # this layout: one table in the router bank
    # an earlier layout: one logit row per task router
    table = ckpt["state_dict"].pop(keys[0])
    prefix = keys[0][: -len("routers.logits")]
    ckpt["state_dict"].update({f"{prefix}routers.{i}.logits": row for i, row in enumerate(table)})
    torch.save(ckpt, last)
    before = last.read_bytes()
    assert main(["search", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"dmtg: error: cannot resume: {last} was written by an earlier version") and "--overwrite" in err
    )
    assert "Traceback" not in err and last.read_bytes() == before  # nothing renamed or rewritten


def test_interrupts_turn_signals_into_a_flag() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Interrupts() as interrupts:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert interrupts.signum == signal.SIGINT and interrupts.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second signal aborts at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) == before


def test_truncated_last_checkpoint_resumes_from_the_previous_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    spec = dmtg_nas.load_spec(small_doc(epochs=2, finetune={"epochs": 0}))
    out = tmp_path / "run"
    full = dmtg_nas.search(spec, out, progress=False)
    last = out / "checkpoints/last.ckpt"
    prev = previous_path(last)
    assert torch.load(prev, weights_only=False)["epoch"] == 0  # the epoch before last is kept
    last.write_bytes(last.read_bytes()[:1000])  # a torn write (not possible with the atomic save)
    with caplog.at_level("WARNING"):
        resumed = dmtg_nas.search(spec, out, resume=True, progress=False)
    assert "last.ckpt is unreadable" in caplog.text and "resuming from" in caplog.text and prev.name in caplog.text
    assert (out / "checkpoints/last.ckpt.corrupt").is_file()
    # epoch 1 trained again from the epoch-0 checkpoint: the same result
    assert resumed.probabilities == full.probabilities
    assert resumed.metrics["test"] == full.metrics["test"]

    # both damaged: a one-line error naming both files, exit code 2
    for path in (last, prev):
        path.write_bytes(b"not a checkpoint")
    assert main(["search", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dmtg: error: cannot resume:") and str(last) in err and str(prev) in err
    assert "Traceback" not in err


def test_atomic_checkpoint_io_keeps_the_previous_file_and_survives_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"n": torch.tensor(1)}, path)
    io.save_checkpoint({"n": torch.tensor(2)}, path)
    assert int(torch.load(path)["n"]) == 2 and int(torch.load(previous_path(path))["n"]) == 1

    def crash(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"n": torch.tensor(3)}, path)
    monkeypatch.undo()
    assert int(torch.load(path)["n"]) == 2 and int(torch.load(previous_path(path))["n"]) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.prev.ckpt"]  # no temp files


def test_select_checkpoint_reports_missing_and_incomplete_files(tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(DmtgError, match="nothing to resume"):
        select_checkpoint(last)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, last)
    with pytest.raises(DmtgError, match=r"last.ckpt is incomplete \(no loops.*last.prev.ckpt is missing"):
        select_checkpoint(last)


# ---------------------------------------------------------------------------- lock


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from dmtg_nas.runlock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another process holds DIR: a search into DIR fails at once naming DIR and that process; a search
    into another folder runs; once the holder dies (SIGKILL) its lock is gone."""
    busy = tmp_path / "busy"
    busy.mkdir()
    spec = dmtg_nas.load_spec(small_doc(epochs=1, finetune={"epochs": 0}))
    (busy / "config.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(Path(dmtg_nas.__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(busy)], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        t0 = time.perf_counter()
        with pytest.raises(RunLockedError, match=rf"{busy} is in use by another run \(process {holder.pid}\)"):
            dmtg_nas.search(spec, busy, progress=False, overwrite=True)
        assert time.perf_counter() - t0 < 30  # refused before any training
        assert main(["search", "--resume", str(busy), "--quiet"]) == 2
        assert f"process {holder.pid}" in capsys.readouterr().err
        assert dmtg_nas.search(spec, tmp_path / "other", progress=False).groups  # other folders are free
    finally:
        holder.kill()
        holder.wait()
    # the dead process's lock does not block
    with RunLock(busy) as lock:
        assert (busy / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunLockedError):
            RunLock(busy).acquire()  # flock: a second open file in this process is refused too
        assert lock.path == busy / ".lock"


# ---------------------------------------------------------------------------- determinism


def test_deterministic_switch_gives_the_same_numbers_on_cpu_and_restores_the_flag() -> None:
    spec = dmtg_nas.load_spec(small_doc(epochs=2, finetune={"epochs": 0}))
    plain = dmtg_nas.search(spec, None, progress=False)
    again = dmtg_nas.search(spec, None, progress=False)
    det = dmtg_nas.search(
        dmtg_nas.load_spec(small_doc(epochs=2, finetune={"epochs": 0}, deterministic=True)), None, progress=False
    )
    assert again.probabilities == plain.probabilities and again.metrics["test"] == plain.metrics["test"]
    assert det.probabilities == plain.probabilities and det.metrics["test"] == plain.metrics["test"]
    assert not torch.are_deterministic_algorithms_enabled()


# ---------------------------------------------------------------------------- numerics


def poison(monkeypatch: pytest.MonkeyPatch, task: str, calls: set[int]) -> None:
    """Make ``task``'s loss NaN on the given training calls (0-based, in call order): the loss of
    plain networks and the search's loss alike."""
    import dmtg_nas.engine.module as module
    from dmtg_nas.nni.router import RouterBank

    seen = [0]

    def poisoned(tasks: Any, total: Any, parts: Any) -> Any:
        seen[0] += 1
        if seen[0] - 1 in calls:
            parts = {**parts, task: parts[task] * float("nan")}
            total = sum(t.weight * parts[t.name] for t in tasks)
        return total, parts

    plain, method = module.multitask_loss, RouterBank.loss

    def plain_loss(tasks: Any, outputs: Any, targets: Any) -> Any:
        return poisoned(tasks, *plain(tasks, outputs, targets))

    def method_loss(z: Any, blocks: Any, tasks: Any) -> Any:
        return poisoned(tasks, *method(z, blocks, tasks))

    monkeypatch.setattr(module, "multitask_loss", plain_loss)
    monkeypatch.setattr(RouterBank, "loss", staticmethod(method_loss))


def test_nonfinite_loss_stops_naming_task_and_step_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = dmtg_nas.load_spec(small_doc(epochs=3, finetune={"epochs": 0}))
    per_epoch = steps_per_epoch(spec)
    bad = per_epoch + 3  # in epoch 1
    poison(monkeypatch, "t2", {bad})
    with pytest.raises(
        NonFiniteLossError, match=rf"step {bad} \(epoch 1\) in task\(s\) t2 \(nan\).*last good checkpoint"
    ):
        dmtg_nas.search(spec, tmp_path / "run", progress=False)
    kept = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)
    assert (kept["epoch"], kept["global_step"]) == (0, per_epoch)
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point())


def test_nonfinite_skip_policy_skips_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dmtg_nas.load_spec(small_doc(epochs=2, finetune={"epochs": 0}, nonfinite="skip"))
    poison(monkeypatch, "t1", {1, 4})
    result = dmtg_nas.search(spec, None, progress=False)
    report = result.metrics["nonfinite"]
    assert report["policy"] == "skip" and report["skipped_batches"] == 2
    assert [(b["phase"], b["step"], b["tasks"]) for b in report["batches"]] == [
        ("search", 1, ["t1"]),
        ("search", 4, ["t1"]),
    ]
    assert all(math.isfinite(p) for row in result.probabilities.values() for p in row)
    assert math.isfinite(result.metrics["totals"]["test"]["total_loss"])


def test_gradient_clip_bounds_every_update_including_the_logits() -> None:
    """Plain SGD with the gradient norm clipped to c: each step moves all parameters (weights and
    grouping logits together) by at most lr * c."""
    lr, clip = 0.5, 1e-3
    doc = small_doc(epochs=1, finetune={"epochs": 0}, gradient_clip=clip)
    doc["strategy"]["optimizer"] = {"name": "sgd", "lr": lr, "momentum": 0.0}
    doc["backbone"] = {"name": "mlp", "hidden": [8, 3]}
    doc["strategy"]["init"] = {"branches": "independent"}  # copies: equal branch losses, zero logit gradients

    class Moves(pl.Callback):
        def __init__(self) -> None:
            self.before: torch.Tensor | None = None
            self.moves: list[float] = []
            self.logit_moves: list[float] = []

        def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
            self.before = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
            self.logits = module.bank.logits.detach().clone()  # type: ignore[attr-defined]

        def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
            after = torch.cat([p.detach().flatten() for p in module.parameters()])
            assert self.before is not None
            self.moves.append(float((after - self.before).norm()))
            logits = module.bank.logits.detach()  # type: ignore[attr-defined]
            self.logit_moves.append(float((logits - self.logits).norm()))

    moves = Moves()
    dmtg_nas.search(dmtg_nas.load_spec(doc), None, progress=False, callbacks=[moves])
    assert moves.moves and max(moves.moves) <= lr * clip * (1 + 1e-4)
    assert max(moves.moves) > 0.5 * lr * clip  # the clip was active (unclipped steps are far larger)
    assert max(moves.logit_moves) > 0  # the logits are trained under the clip


# ---------------------------------------------------------------------------- the command, killed and resumed


def e2e_doc() -> dict[str, Any]:
    """Long enough to be killed after its first checkpoint; with the attribution warm start."""
    doc = small_doc(epochs=12, warmup={"method": "attribution", "epochs": 1, "min_steps": 0})
    doc["dataset"]["samples"] = 800
    doc["strategy"]["batch_size"] = 32
    return doc


def dmtg(*args: str) -> list[str]:
    return [sys.executable, "-m", "dmtg_nas.cli", *args]


def run_env() -> dict[str, str]:
    """This checkout's package, two threads, quiet warnings (the same for every run compared)."""
    return {
        **os.environ,
        "PYTHONPATH": str(Path(dmtg_nas.__file__).parents[1]),
        "OMP_NUM_THREADS": "2",
        "PYTHONWARNINGS": "ignore",
    }


def start_until_checkpoint(spec: Path, out: Path) -> subprocess.Popen[str]:
    """Start `dmtg search` and return once its first checkpoint file exists."""
    proc = subprocess.Popen(
        dmtg("search", str(spec), "--out", str(out), "--quiet"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(),
    )
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None, f"the search ended before its first checkpoint: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    return proc


def finished(out: Path) -> tuple[Any, Any]:
    import json

    grouping = json.loads((out / "grouping.json").read_text())
    return grouping, comparable(json.loads((out / "metrics.json").read_text()))


@pytest.fixture(scope="module")
def e2e_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Any, Any]]:
    """The spec file and the outputs of an uninterrupted `dmtg search` of it."""
    root = tmp_path_factory.mktemp("e2e")
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(e2e_doc()))
    proc = subprocess.run(
        dmtg("search", str(spec), "--out", str(root / "full"), "--quiet"),
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return spec, finished(root / "full")


@pytest.mark.slow
def test_sigkilled_search_resumes_to_the_uninterrupted_result(
    tmp_path: Path, e2e_reference: tuple[Path, tuple[Any, Any]]
) -> None:
    """SIGKILL (no chance to save anything) right after the first checkpoint; `--resume` ends with the
    grouping.json and metrics.json (all but wall-clock times) of the uninterrupted run, exactly; the
    warm start is not repeated: its logits are in the checkpoint, its record in warmstart.json."""
    spec, (grouping, metrics) = e2e_reference
    out = tmp_path / "run"
    proc = start_until_checkpoint(spec, out)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "grouping.json").exists()  # it was killed mid-search
    resumed = subprocess.run(
        dmtg("search", "--resume", str(out), "--quiet"), capture_output=True, text=True, env=run_env(), timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr  # the dead run's lock does not block
    assert finished(out) == (grouping, metrics)
    assert metrics["warmup"]["clusters"]  # the warm start ran (and its record survived the kill)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resumes(
    tmp_path: Path, e2e_reference: tuple[Path, tuple[Any, Any]]
) -> None:
    spec, (grouping, metrics) = e2e_reference
    out = tmp_path / "run"
    proc = start_until_checkpoint(spec, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM: checkpoint saved at" in err
    assert f"continue with: dmtg search --resume {out}" in err
    assert "Traceback" not in err
    resumed = subprocess.run(
        dmtg("search", "--resume", str(out), "--quiet"), capture_output=True, text=True, env=run_env(), timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert finished(out) == (grouping, metrics)


# ---------------------------------------------------------------------------- damaged or foreign checkpoint content


def flip_tensor_bytes(path: Path) -> str:
    """Flip 16 bytes in the middle of the largest stored tensor of the torch zip at ``path`` (the
    size stays, the archive's CRC of that entry no longer matches); returns the entry's name."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    local = info.header_offset
    start = local + 30 + int.from_bytes(raw[local + 26 : local + 28], "little")
    start += int.from_bytes(raw[local + 28 : local + 30], "little")
    middle = start + info.file_size // 2
    raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
    path.write_bytes(bytes(raw))
    return info.filename


def test_flipped_bytes_in_a_stored_tensor_resume_from_the_previous_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = dmtg_nas.load_spec(small_doc(epochs=2, finetune={"epochs": 0}))
    out = tmp_path / "run"
    full = dmtg_nas.search(spec, out, progress=False)
    last = out / "checkpoints/last.ckpt"
    size = last.stat().st_size
    entry = flip_tensor_bytes(last)
    assert last.stat().st_size == size
    with caplog.at_level("WARNING"):
        resumed = dmtg_nas.search(spec, out, resume=True, progress=False)
    assert f"last.ckpt is damaged (CRC mismatch in {entry}) (kept as last.ckpt.corrupt); resuming from" in caplog.text
    assert (out / "checkpoints/last.ckpt.corrupt").stat().st_size == size
    assert resumed.probabilities == full.probabilities  # epoch 1 trained again from the epoch-0 checkpoint
    assert resumed.metrics["test"] == full.metrics["test"]


def test_a_checkpoint_of_another_spec_is_refused_naming_the_difference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoints of a K=4 run copied into a K=2 run's folder: not resumed (it would silently
    continue another grouping); one line names the key that differs, exit code 2, nothing renamed."""
    import shutil

    for k in (2, 4):
        doc = small_doc(epochs=1, finetune={"epochs": 0})
        doc["branches"] = k
        dmtg_nas.search(dmtg_nas.load_spec(doc), tmp_path / f"k{k}", progress=False)
    last = tmp_path / "k2/checkpoints/last.ckpt"
    shutil.copyfile(tmp_path / "k4/checkpoints/last.ckpt", last)
    before = last.read_bytes()
    assert main(["search", "--resume", str(tmp_path / "k2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"dmtg: error: cannot resume: {last} is from another spec (branches: 4 in the checkpoint, 2 in config.yaml) "
        f"and {previous_path(last)} is missing\n"
    )
    assert last.read_bytes() == before
