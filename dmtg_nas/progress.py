"""Progress of long loops (benchmark runs, suite runs, tuning trials), reported to whoever shows it.

The library draws no progress bars and sets no log levels: a loop calls
``progress(label, done, total, note)`` before its first unit of work and after each one, and the
caller decides what to show (the command line draws a bar per label, :mod:`dmtg_nas.cli`).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Progress"]


class Progress(Protocol):
    """``label``: which loop (``benchmark``, ``suite dmtg``, ``trials``); ``done`` of ``total`` units;
    ``note``: what runs now or the best value so far."""

    def __call__(self, label: str, done: int, total: int, note: str = "") -> None: ...
