"""Progress of long loops (benchmark runs, suite runs, tuning trials), and the line that shows it.

The library draws no progress bars and sets no log levels: a loop calls
``progress(label, done, total, note)`` before its first unit of work and after each one, and the
caller decides what to show. The command line shows a :class:`Display`: one line on stderr that
names the stage and gives its elapsed time and an estimate of the time left, in the same format as
the stage bars of a search (:mod:`dmtg_nas.engine.bars`)::

    tune: trials 1/2 |██████      | 00:17 elapsed, ETA 00:17, best 3.6664
    suite dmtg: runs 1/2 |██████      | 00:58 elapsed, ETA 00:58, pairs-k3 seed 1
    search: epoch 33/40 |█████████▊  | 04:49 elapsed, ETA 01:03, val_loss=0.411, train_loss=0.118
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Protocol, TextIO

__all__ = ["BAR_FORMAT", "Display", "Progress", "fit_width", "stage_line"]

# every progress line of the command line: "STAGE: COUNT |bar| ELAPSED elapsed, ETA LEFT, NOTE"
# (tqdm's fields; ``remaining`` is "?" until the first unit is done)
BAR_FORMAT = "{desc} |{bar:12}| {elapsed} elapsed, ETA {remaining}{postfix}"


class Progress(Protocol):
    """``label``: which loop (``benchmark``, ``suite dmtg``, ``rescore dmtg``, ``tune``); ``done`` of
    ``total`` units; ``note``: what runs now or the best value so far."""

    def __call__(self, label: str, done: int, total: int, note: str = "") -> None: ...


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# seconds between two draws of a progress line where stderr is not a terminal (a log file, CI):
# each draw there is one more line in the file
FILE_INTERVAL = 10.0


def draw_interval(stream: Any) -> float:
    """Seconds between two draws of a progress line on ``stream``: tqdm's 0.1 on a terminal,
    :data:`FILE_INTERVAL` elsewhere."""
    return 0.1 if _is_tty(stream) else FILE_INTERVAL


def _width(stream: Any) -> dict[str, Any]:
    """tqdm's width arguments: the terminal's width, followed as it changes; a fixed wide line where
    the terminal reports none (a new pseudo-terminal says 0 columns, and tqdm would draw nothing)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a terminal: tqdm writes the whole line
        columns = None
    return {"ncols": 200, "nrows": 20} if columns == 0 else {"dynamic_ncols": True}


def fit_width(bar: Any) -> Any:
    """``bar`` (a tqdm bar someone else opened, e.g. Lightning's) drawn at a fixed width where its
    terminal reports none (see :func:`_width`)."""
    fixed = _width(getattr(bar, "fp", None))
    if "ncols" in fixed and not getattr(bar, "disable", True):
        bar.dynamic_ncols = False
        bar.ncols, bar.nrows = fixed["ncols"], fixed["nrows"]
    return bar


class Display:
    """One progress line on stderr for a command's loops (a :class:`Progress`):
    ``LABEL: UNIT done/total |bar| ELAPSED elapsed, ETA LEFT, NOTE``.

    The ETA is the average time per unit so far times the units left (``?`` before the first unit
    ends). A new label (the next strategy of a suite, a rescoring pass) ends the line of the one
    before, which stays on screen as it finished; there is never more than one line in progress. On
    a terminal the line is redrawn every ``tick`` seconds (default 1), so that the elapsed time moves
    during long units; elsewhere (a log file) it is written only when something changes.
    """

    def __init__(self, unit: str = "runs", *, stream: TextIO | None = None, tick: float | None = None) -> None:
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tick = tick if tick is not None else (1.0 if _is_tty(self.stream) else 0.0)
        self.label: str | None = None
        self._bar: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __call__(self, label: str, done: int, total: int, note: str = "") -> None:
        with self._lock:
            if self._bar is not None and label != self.label:
                self._end()
            description = f"{label}: {self.unit} {done}/{total}"
            if self._bar is None:
                # initial: units done before this process started (a resumed study) do not count for the rate
                self._bar = stage_line(description, total, note, stream=self.stream, initial=done)
                self.label = label
                self._start_ticker()
            bar = self._bar
            bar.total = total
            bar.n = done
            bar.set_description_str(description, refresh=False)
            bar.set_postfix_str(note, refresh=False)
            if done >= total:
                self._end()  # drawn a last time as it ends
            else:
                bar.refresh()

    def close(self) -> None:
        """End the line in progress (it stays on screen as it is)."""
        with self._lock:
            self._end()

    def _end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stop.set()

    def _start_ticker(self) -> None:
        if self.tick <= 0:
            return
        self._stop = stop = threading.Event()

        def tick() -> None:
            while not stop.wait(self.tick):
                with self._lock:
                    if self._bar is not None and not stop.is_set():
                        self._bar.refresh()

        threading.Thread(target=tick, name="dmtg-progress", daemon=True).start()


def stage_line(
    description: str, total: int | None, note: str = "", *, stream: TextIO | None = None, initial: int = 0
) -> Any:
    """A progress line on stderr in :data:`BAR_FORMAT` for a training that Lightning does not run
    (the merge check's batched group networks) and for :class:`Display`: a tqdm bar of ``total``
    steps, ``initial`` of them done before it opened (they do not count for the rate); the caller
    updates it (``update``, ``set_description_str``) and closes it."""
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    return tqdm(
        desc=description,
        total=total,
        initial=initial,
        file=stream,
        bar_format=BAR_FORMAT,
        smoothing=0,
        postfix=note or None,
        mininterval=draw_interval(stream),
        **_width(stream),
    )
