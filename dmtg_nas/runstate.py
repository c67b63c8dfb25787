"""The state of a search run on disk: atomic checkpoints, exact resumption, interruption, the run lock.

- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the same folder and
  moves it into place with ``os.replace``; the checkpoint it replaces is kept as
  ``<name>.prev.ckpt`` (``checkpoints/last.prev.ckpt`` for ``last.ckpt``).
- :class:`RunStateCallback` adds what Lightning does not save itself: the torch / CUDA / numpy /
  Python RNG states, the training data order (generator states of the
  :class:`~dmtg_nas.data.base.ResumableRandomSampler`) and the count of skipped non-finite
  batches. With Lightning's own state (weights, grouping logits, optimizer, learning-rate
  scheduler, epoch, step, callback states) a resumed search continues exactly where it stopped,
  also from the middle of an epoch.
- :class:`Interrupts` turns SIGINT (Ctrl-C) and SIGTERM into a request to stop at the next step
  boundary; :class:`InterruptCallback` then saves a checkpoint and raises :class:`SearchInterrupted`.
- :func:`select_checkpoint` checks ``last.ckpt`` before resuming (the archive's CRCs, the layout, the
  :func:`spec_identity` it was written for) and falls back to the previous one.
- :func:`run_finished` tells a finished run from an interrupted one (nothing left to resume).
- :class:`~dmtg_nas.runlock.RunLock` keeps two runs out of one output folder (``fcntl.flock``:
  released when the holding process ends, however it ends).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from .data.base import ResumableRandomSampler
from .errors import DmtgError, SearchInterrupted

__all__ = [
    "AtomicCheckpointIO",
    "Interrupts",
    "InterruptCallback",
    "RunStateCallback",
    "interrupt_message",
    "previous_path",
    "run_finished",
    "select_checkpoint",
    "spec_identity",
]

_logger = logging.getLogger(__name__)

STATE_KEY = "dmtg_run_state"
SPEC_KEY = "dmtg_spec"

# what a checkpoint's weights, logits and data order depend on: a resume under another value is another run
# (strategy.trainer and num_workers may change on resume: --devices, --precision; epochs: a resumed
# search may train on to more epochs; finetune, local_search and polish come after the supernet)
_IDENTITY_PARTS = ("tasks", "dataset", "backbone", "heads", "branches", "strategy")
_FREE_STRATEGY_KEYS = (
    "name",
    "description",
    "trainer",
    "num_workers",
    "epochs",
    "stop_when_decided",
    "finetune",
    "local_search",
    "polish",
)


def spec_identity(spec: Any) -> dict[str, Any]:
    """The parts of a resolved spec that define the network, the data and the grouping, with their
    fingerprint (SHA-256 of their canonical JSON): ``{"fingerprint": ..., "parts": {...}}``. Stored in
    every search checkpoint, so that a checkpoint of another spec (another K, data set, ...) is never
    resumed."""
    doc = spec.to_dict()
    parts = {key: doc[key] for key in _IDENTITY_PARTS}
    parts["strategy"] = {k: v for k, v in parts["strategy"].items() if k not in _FREE_STRATEGY_KEYS}
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return {"fingerprint": hashlib.sha256(text.encode()).hexdigest(), "parts": parts}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        named = {f"{prefix}.{key}" if prefix else str(key): item for key, item in value.items()}
        return {k: v for name, item in named.items() for k, v in _flat(item, name).items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def _identity_mismatch(saved: Any, expected: Mapping[str, Any]) -> str | None:
    """None if ``saved`` (a checkpoint's :func:`spec_identity`) matches ``expected``, else what differs."""
    if not isinstance(saved, dict) or saved.get("fingerprint") == expected["fingerprint"]:
        return None  # checkpoints of earlier versions carry none: their layout is checked instead
    ours, theirs = _flat(expected["parts"]), _flat(saved.get("parts", {}))
    keys = [k for k in {**theirs, **ours} if ours.get(k, "<none>") != theirs.get(k, "<none>")]
    shown = "; ".join(
        f"{k}: {json.dumps(theirs.get(k))} in the checkpoint, {json.dumps(ours.get(k))} in config.yaml"
        for k in keys[:3]
    )
    more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
    return f"from another spec ({shown or 'another fingerprint'}{more})"


# ---------------------------------------------------------------------------- checkpoints

# what a search writes when it has finished (pipeline.outputs.write_outputs), model.pt after the JSON files
FINAL_OUTPUTS = ("grouping.json", "metrics.json", "history.json", "model.pt")


def run_finished(out_dir: str | Path) -> bool:
    """Whether the run in ``out_dir`` has finished: its final outputs are all there and written after
    its start (``config.yaml``) and its last search checkpoint. Outputs older than either belong to
    an earlier run that ``overwrite`` left in the folder, not to the (interrupted) run there now."""
    out = Path(out_dir)
    if not all((out / name).is_file() for name in FINAL_OUTPUTS):
        return False
    written = min((out / name).stat().st_mtime_ns for name in FINAL_OUTPUTS)
    started = [out / "config.yaml", out / "checkpoints" / "last.ckpt"]
    return all(written >= path.stat().st_mtime_ns for path in started if path.is_file())


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint replaced by a save of ``path`` is kept: ``last.ckpt`` -> ``last.prev.ckpt``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Torch checkpoints written atomically, keeping the previous version of each file.

    The new checkpoint goes to a temporary file in the target folder (same file system), is flushed
    to disk, and replaces the target with ``os.replace``; the old target is first hard-linked (or
    copied) to :func:`previous_path`, so a good checkpoint exists under one of the two names at
    every moment, whenever the process dies.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if target.is_file():
                prev = previous_path(target)
                prev_tmp = tmp.with_name(tmp.name + ".prev")
                try:
                    os.link(target, prev_tmp)
                except OSError:  # no hard links on this file system
                    shutil.copyfile(target, prev_tmp)
                os.replace(prev_tmp, prev)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # make the renames durable where the platform allows it
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _damaged_entry(path: Path) -> str | None:
    """What is wrong with the zip archive of a torch checkpoint (a flipped byte in a stored tensor:
    torch itself does not check the CRCs), or None when every entry's CRC is right."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    except Exception as exc:  # zlib/struct errors from a mangled entry header
        return f"damaged ({type(exc).__name__} while checking the archive)"
    return f"damaged (CRC mismatch in {bad})" if bad is not None else None


def _read_checkpoint(path: Path, identity: Mapping[str, Any] | None = None) -> tuple[str | None, dict[str, Any]]:
    """``(None, checkpoint)`` if ``path`` is a complete search checkpoint (of the spec ``identity``,
    when given), else ``(what is wrong, {})``."""
    if not path.is_file():
        return "missing", {}
    damaged = _damaged_entry(path) if zipfile.is_zipfile(path) else None
    if damaged is not None:
        return damaged, {}
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # a payload is refused, not run
    except Exception as exc:  # any failure to read means the file is unusable
        first = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else ""
        return f"unreadable ({type(exc).__name__}{': ' + first if first else ''})", {}
    if not isinstance(ckpt, dict):
        return "not a checkpoint", {}
    missing = [k for k in ("state_dict", "loops", "optimizer_states", "epoch", "global_step") if k not in ckpt]
    if missing:
        return f"incomplete (no {', '.join(missing)})", {}
    foreign = _identity_mismatch(ckpt.get(SPEC_KEY), identity) if identity is not None else None
    if foreign is not None:
        return foreign, {}
    return None, ckpt


# the grouping logits of earlier supernet layouts: one parameter per task, then one table on the space
_OLD_LOGITS = re.compile(r"(^|\.)(routers\.\d+\.logits|grouping_logits)$")


def _same_layout(path: Path, ckpt: Mapping[str, Any]) -> Path:
    """``path`` if its (sound) checkpoint has this version's supernet layout; else :class:`DmtgError`.

    The supernet holds the grouping logits as one (N, K) table in its router bank (``routers.logits``);
    checkpoints with one logit parameter per task (``routers.<i>.logits``) or the table on the space
    (``grouping_logits``) come from earlier layouts and cannot be resumed by this one (the file is
    left as it is).
    """
    if any(_OLD_LOGITS.search(key) for key in ckpt["state_dict"]):
        raise DmtgError(
            f"cannot resume: {path} was written by an earlier version of dmtg-nas (another layout of the "
            "supernet) and cannot be resumed by this one; start the search again with --overwrite"
        )
    return path


def select_checkpoint(last: Path, identity: Mapping[str, Any] | None = None) -> Path:
    """The checkpoint to resume from: ``last`` if it is sound, else its previous version.

    Sound: a zip archive whose CRCs are all right, holding a complete checkpoint written for the spec
    ``identity`` (:func:`spec_identity`; None: any). A damaged or foreign ``last`` is renamed to
    ``<name>.corrupt`` (so the next save does not keep it as the previous version) and a warning names
    it. Raises :class:`DmtgError` when neither is usable.
    """
    problem, ckpt = _read_checkpoint(last, identity)
    if problem is None:
        return _same_layout(last, ckpt)
    prev = previous_path(last)
    prev_problem, prev_ckpt = _read_checkpoint(prev, identity)
    if problem == "missing" and prev_problem == "missing":
        raise DmtgError(f"{last.parent.parent}: nothing to resume (no {last.parent.name}/{last.name})")
    if prev_problem is not None:
        raise DmtgError(f"cannot resume: {last} is {problem} and {prev} is {prev_problem}")
    if problem != "missing":
        last.replace(last.with_name(last.name + ".corrupt"))
        _logger.warning("%s is %s (kept as %s.corrupt); resuming from %s", last, problem, last.name, prev)
    else:
        _logger.warning("%s is missing; resuming from %s", last, prev)
    return _same_layout(prev, prev_ckpt)


# ---------------------------------------------------------------------------- run state


def _rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Any:
    """Every random generator (torch, CUDA where in use, numpy, Python) as it was on entry, again on
    exit: what runs inside draws nothing from the run's streams."""
    state = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(state)


def _resumable_sampler(loader: Any) -> ResumableRandomSampler | None:
    for owner in (loader, getattr(loader, "batch_sampler", None)):
        sampler = getattr(owner, "sampler", None)
        for candidate in (sampler, getattr(sampler, "sampler", None)):
            if isinstance(candidate, ResumableRandomSampler):
                return candidate
    return None


class RunStateCallback(pl.Callback):
    """Saves and restores what Lightning's checkpoints lack for an exact resumption.

    Args:
        train_loader: the search's training loader (its :class:`ResumableRandomSampler` is resumed).
        training_module: the module whose ``nonfinite_skips`` are kept.
        identity: the run's :func:`spec_identity`, stored in every checkpoint.
    """

    def __init__(self, train_loader: Any, training_module: Any, identity: Mapping[str, Any] | None = None) -> None:
        self.train_loader = train_loader
        self.training_module = training_module
        self.identity = identity
        self.batch_size = int(getattr(train_loader, "batch_size", None) or 0)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        sampler = _resumable_sampler(self.train_loader)
        checkpoint[STATE_KEY] = {
            "rng": _rng_state(),
            "sampler": sampler.state_dict() if sampler is not None else None,
            "nonfinite_skips": list(getattr(self.training_module, "nonfinite_skips", [])),
        }
        if self.identity is not None:
            checkpoint[SPEC_KEY] = dict(self.identity)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            _logger.warning("the checkpoint has no run state (older version): RNG and data order start afresh")
            return
        _set_rng_state(state["rng"])
        if hasattr(self.training_module, "nonfinite_skips"):
            self.training_module.nonfinite_skips = list(state.get("nonfinite_skips", []))
        sampler = _resumable_sampler(self.train_loader)
        if sampler is not None and state.get("sampler") is not None:
            per_epoch = len(self.train_loader)
            done = int(checkpoint["global_step"]) - int(checkpoint["epoch"]) * per_epoch
            skip_batches = done if 0 < done < per_epoch else 0
            sampler.resume(state["sampler"], skip_batches * self._samples_per_batch())

    def _samples_per_batch(self) -> int:
        if self.batch_size:  # a loader that batches samples itself
            return self.batch_size
        # file data: the loader's batch_sampler; in-memory data: its sampler yields whole batches
        for owner in (getattr(self.train_loader, "batch_sampler", None), getattr(self.train_loader, "sampler", None)):
            size = getattr(owner, "batch_size", None)
            if size:
                return int(size)  # the global batch: the sampler's order is the global one
        return 1


# ---------------------------------------------------------------------------- interruption


class Interrupts:
    """While active, SIGINT and SIGTERM only set :attr:`signum`; training stops at the next step.

    A second signal restores the default handlers and raises ``KeyboardInterrupt`` at once. Outside
    the main thread (where Python allows no signal handlers) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def active(self) -> bool:
        return bool(self._previous)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        _logger.warning("%s received: stopping after the current step", signal.Signals(signum).name)

    def install(self) -> None:
        """(Re)install the handlers, e.g. over the SIGTERM handler Lightning's Trainer sets."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            current = signal.getsignal(sig)
            if current != self._handle:
                self._previous.setdefault(sig, current)
                signal.signal(sig, self._handle)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> Interrupts:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()


class InterruptCallback(pl.Callback):
    """Stops training at a step boundary after a signal.

    With ``checkpoint`` (the search), a checkpoint is saved first: in the middle of an epoch at
    ``on_train_batch_end``, at the end of an epoch (a signal during the last batch or the validation)
    at ``on_train_epoch_end``, where ``ModelCheckpoint`` saves too.
    ``describe(signal_name, saved)`` makes the message of :class:`SearchInterrupted`.
    """

    def __init__(self, interrupts: Interrupts, describe: Any, checkpoint: Path | None = None) -> None:
        self.interrupts = interrupts
        self.describe = describe
        self.checkpoint = checkpoint

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interrupts.active:
            self.interrupts.install()  # Lightning replaced the SIGTERM handler when the fit started

    def _stop(self, trainer: pl.Trainer, saved: str | None) -> None:
        assert self.interrupts.signum is not None
        raise SearchInterrupted(self.describe(self.interrupts.name, saved), self.interrupts.signum)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.interrupts.signum is None:
            return
        if self.checkpoint is None:
            self._stop(trainer, None)
        # the epoch's last batch: wait for its validation and end-of-epoch checkpoint
        if batch_idx + 1 < trainer.num_training_batches:
            trainer.save_checkpoint(str(self.checkpoint))
            self._stop(trainer, f"epoch {trainer.current_epoch}, step {trainer.global_step}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the state ModelCheckpoint saves at this hook (it runs after the other callbacks)
        if self.interrupts.signum is not None and self.checkpoint is not None:
            trainer.save_checkpoint(str(self.checkpoint))
            self._stop(trainer, f"the end of epoch {trainer.current_epoch}, step {trainer.global_step}")


def interrupt_message(out_dir: Path | None, phase: str) -> Any:
    """``describe(signal_name, saved)`` for :class:`SearchInterrupted` in a phase of the run
    (``search``, ``warm start``, ``fine-tune``, ``merge check``, ``evaluation``): what was saved and
    how to go on."""

    def describe(sig: str, saved: str | None) -> str:
        if out_dir is None:
            return f"interrupted by {sig} during the {phase} (no output folder: nothing saved)"
        resume = f"dmtg search --resume {out_dir}"
        if phase == "search":
            ckpt = out_dir / "checkpoints" / "last.ckpt"
            return f"interrupted by {sig}: checkpoint saved at {saved} in {ckpt}; continue with: {resume}"
        if phase == "warm start":
            return (
                f"interrupted by {sig} during the warm start, before the first checkpoint; start again with "
                f"--out {out_dir} --overwrite"
            )
        ckpt = out_dir / "checkpoints" / "last.ckpt"
        return (
            f"interrupted by {sig} during the {phase}: the finished search is in {ckpt}; "
            f"continue with: {resume} (the stages after the search run again)"
        )

    return describe
