"""The lock that keeps two runs out of one output folder (light: importable before torch)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DmtgError, RunLockedError

__all__ = ["LOCK_NAME", "RunLock", "launcher_rank_zero"]

LOCK_NAME = ".lock"


def launcher_rank_zero() -> bool:
    """Whether the launcher's environment makes this the global rank 0 process (the one that writes
    and holds the lock). Lightning's launcher sets ``NODE_RANK``/``LOCAL_RANK``, ``torchrun`` sets
    ``RANK``; a plain process has none and is rank 0."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


class RunLock:
    """An exclusive ``fcntl.flock`` on ``DIR/.lock``; the file names the holder's process id.

    The lock belongs to the open file: it ends with the process, so a crashed run leaves nothing
    that blocks the next one. On platforms without ``fcntl`` it does nothing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only folder, a file system that refuses it
            raise DmtgError(f"{self.folder}: cannot write its run lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"{self.folder} is in use by another run (process {holder}); wait for it to end or choose "
                "another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def check(self) -> None:
        """Raise :class:`RunLockedError` now if a live process holds the folder (takes nothing)."""
        if self.folder.is_dir():
            self.acquire()
            self.release()
