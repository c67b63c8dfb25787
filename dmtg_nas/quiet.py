"""Known-harmless messages of the libraries we call, silenced around our own calls only.

Lightning announces every Trainer it builds ("GPU available: False, used: False", "TPU available:
...", a "💡 Tip" advertising litlogger, "`Trainer.fit` stopped: `max_epochs=2` reached") and warns of
its own use of a deprecated torch API (``LeafSpec``); NNI warns at import about torch classes it does
not know ("... is found to be not a nn.Module"). A search builds several Trainers, so a run would
print each of them several times. :func:`quiet_libraries` wraps the package's calls into those
libraries: inside it these warnings are ignored (by message, nothing else) and Lightning's loggers
show warnings and errors only; outside it the caller's filters and log levels are untouched.
:func:`set_verbose` (``--verbose`` on the command line) turns the silencing off.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["HARMLESS_WARNINGS", "LIBRARY_LOGGERS", "is_verbose", "quiet_libraries", "set_verbose"]

# (message pattern, category): warnings of the libraries about themselves, not about the caller's input
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r".*is found to be not a nn\.Module.*", RuntimeWarning),  # NNI at import: torch classes newer than it
    (r".*LeafSpec.*", Warning),  # Lightning's own use of a deprecated torch pytree API
    (r".*does not have many workers.*", UserWarning),  # in-memory tensors need no loader workers
    (r".*sync_dist=True.*", Warning),  # DDP: torchmetrics combines our metrics over the processes already
    # --overwrite: the run folder's earlier logs are replaced, as the user asked
    (r"Experiment logs directory .* exists and is not empty.*", UserWarning),
    # Optuna: the storage's dead-worker retry (dmtg tune's choice) is marked experimental
    (r".*HeartbeatStaleTrialCallback is experimental.*", Warning),
)
# Lightning's banners (devices, the litlogger tip, why fit stopped) are INFO records of these loggers
LIBRARY_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")

_verbose = False


def set_verbose(on: bool) -> None:
    """Show everything the libraries print (:func:`quiet_libraries` does nothing while on)."""
    global _verbose
    _verbose = on


def is_verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Inside: :data:`HARMLESS_WARNINGS` ignored and :data:`LIBRARY_LOGGERS` at WARNING at least;
    both restored on the way out. Nests; does nothing with :func:`set_verbose`."""
    if _verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for message, category in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger in loggers:
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
