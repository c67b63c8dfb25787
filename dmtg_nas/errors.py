"""The project's exceptions.

Every error a user can cause derives from :class:`DmtgError`. Each subclass also derives from the
matching builtin (``ValueError``, ``FileNotFoundError``), so callers that catch builtins keep working.
The command line prints these as one line and exits with code 2; anything else is a bug.
"""

from __future__ import annotations

import difflib
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "DmtgError",
    "SpecError",
    "DataError",
    "NonFiniteLossError",
    "NonFiniteMetricsError",
    "RunLockedError",
    "SearchInterrupted",
    "file_problem",
    "suggest",
]


class DmtgError(Exception):
    """Root of every error caused by user input (specs, data, run directories)."""


class SpecError(DmtgError, ValueError):
    """A search-space or strategy document is invalid.

    Args:
        message: what is wrong and what is allowed.
        source: the file the value came from (or ``"<overrides>"``), if known.
        key: the dotted key path of the bad value, e.g. ``"strategy.temperature.schedule"``.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.message = message
        self.source = source
        self.key = key
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.source, self.key) if part)
        return f"{where}: {self.message}" if where else self.message

    def located(self, source: str | None = None, prefix: str | None = None) -> SpecError:
        """Return a copy placed in ``source`` with ``prefix`` prepended to the key path."""
        key = ".".join(p for p in (prefix, self.key) if p) or None
        return SpecError(self.message, source=self.source or source, key=key)


class DataError(DmtgError, ValueError):
    """A data set is missing, unreadable or inconsistent with the spec."""


class SearchInterrupted(DmtgError):
    """The search stopped on SIGINT or SIGTERM; ``message`` says what was saved and how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class RunLockedError(DmtgError):
    """Another live process holds the output folder."""


class NonFiniteLossError(DmtgError, FloatingPointError):
    """A training step produced a non-finite loss (policy ``strategy.nonfinite: stop``)."""

    def __init__(self, tasks: list[str], step: int, epoch: int, values: dict[str, float], detail: str = "") -> None:
        self.tasks, self.step, self.epoch, self.values = tasks, step, epoch, values
        where = f"in task(s) {', '.join(f'{t} ({values[t]})' for t in tasks)}" if tasks else "in the total loss"
        message = f"non-finite loss at step {step} (epoch {epoch}) {where}"
        super().__init__(f"{message}; {detail}" if detail else message)


class NonFiniteMetricsError(DmtgError, FloatingPointError):
    """The finished run's final metrics hold NaN or infinite values: its result means nothing.

    Args:
        names: the non-finite metrics as ``"<split> <task>.<metric>"`` (or ``"<split> <total>"``).
        skipped: training batches skipped as non-finite (``strategy.nonfinite: skip``).
        out: the folder whose outputs are kept for inspection, if any.
    """

    def __init__(self, names: list[str], skipped: int = 0, out: str | None = None) -> None:
        self.names = names
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        message = f"the final metrics are not finite (NaN or inf): {shown}"
        if skipped:
            message += f"; {skipped} training batches were skipped as non-finite (strategy.nonfinite: skip)"
        if out:
            message += f"; the outputs are kept in {out}"
        super().__init__(message)


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` when ``name`` is close to one of ``choices``, else ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def allowed(choices: Sequence[str]) -> str:
    """Format a list of allowed names for an error message."""
    return ", ".join(repr(c) for c in choices)


_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data or weights file, or None when it is a regular file.

    ``/dev/zero`` or a FIFO would be read forever (or block): they are "not a regular file", told
    apart from a file that is not there and from a folder.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "file not found"
    except NotADirectoryError:
        return "file not found (a part of the path is a file, not a folder)"
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"not a regular file ({kind})"
