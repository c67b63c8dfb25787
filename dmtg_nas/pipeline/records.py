"""What each stage of a search returns, and what the whole search returns (:class:`SearchResult`).

The stages run in order, each from the records of the ones before it:

warm start (:class:`~dmtg_nas.warmstart.WarmStart`) -> one-shot search (:class:`SearchRecord`) ->
fine-tune (:class:`FinetuneRecord`) -> merge check / local search (:class:`CheckRecord`) -> outputs
(:class:`SearchResult`, ``metrics.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..network import GroupedNetwork

__all__ = [
    "CheckRecord",
    "FinetuneRecord",
    "SearchRecord",
    "SearchResult",
    "StageRecord",
    "Supernet",
    "Timings",
]


class Supernet(Protocol):
    """What the stages after the search need of the searched space: its architecture record and
    the grouped network of a sample (:meth:`dmtg_nas.nni.space.GroupingSpace.freeze`)."""

    architecture: dict[str, Any]

    def freeze(self, sample: Any, *, reuse: bool = False) -> GroupedNetwork: ...


@dataclass
class SearchRecord:
    """The one-shot search's outcome.

    Attributes:
        space: the trained supernet.
        sample: each task's branch (``argmax_k S[i, k]``).
        probabilities: each task's softmax(S[i]) at the end.
        skipped: batches skipped for a non-finite loss (``{step, epoch, tasks}``).
        seconds: the search's wall time (the supernet's training; not the warm start).
        affinity: the affinity scout's record (affinity, clusters, samples, seconds; None: no scout).
        alignment: the gradient alignment's record (measurements, seconds, similarity; None: off).
        polish: the polish of the relaxation's argmax (``relaxed``: each task's branch before it,
            ``moves``; None: not polished).
        kept: ``strategy.keep: best``: the epoch kept (``{"policy", "monitor", "epoch", "value"}``;
            None: the last epoch's supernet).
        decided_epoch: ``strategy.stop_when_decided``: the epoch after which the supernet stopped,
            the grouping decided (None: it trained all ``strategy.epochs``).
    """

    space: Supernet
    sample: dict[str, int]
    probabilities: dict[str, list[float]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    affinity: dict[str, Any] | None = None
    alignment: dict[str, Any] | None = None
    polish: dict[str, Any] | None = None
    kept: dict[str, Any] | None = None
    decided_epoch: int | None = None

    def unused_epochs(self, epochs: int) -> int:
        """The supernet's epochs (of ``epochs``) left unused by a stop once decided."""
        return max(epochs - self.decided_epoch, 0) if self.decided_epoch is not None else 0


@dataclass
class FinetuneRecord:
    """The pruned network of the search's sample, fine-tuned for ``strategy.finetune.epochs`` (plus
    the supernet's epochs a stop once decided left unused: ``epochs``), or as the search left it
    where ``strategy.finetune.enabled`` leaves the fine-tune out (``not_run`` says why)."""

    model: GroupedNetwork
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    epochs: int = 0
    not_run: str | None = None  # why the fine-tune did not run (``finetune.enabled``), else None


@dataclass
class CheckRecord:
    """The merge check (local search) after the fine-tune.

    Attributes:
        sample: the final grouping (the search's, or the one the check moved to).
        model: the final network (the fine-tuned one, the check's group networks, or a retraining).
        record: ``metrics.json``'s ``local_search`` section (None: the check is off).
        search_val: the fine-tuned network's validation rows, where the check evaluated them.
        local_seconds: the local search alone (the groups' decision), without assembling the model.
        seconds: the whole stage.
        skipped: batches skipped for a non-finite loss while retraining the final grouping.
    """

    sample: dict[str, int]
    model: GroupedNetwork
    record: dict[str, Any] | None = None
    search_val: dict[str, dict[str, float]] | None = None
    local_seconds: float = 0.0
    seconds: float = 0.0
    skipped: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StageRecord:
    """One stage in ``metrics.json``'s ``stages``: its name, the grouping after it, its wall time in
    this run (0 for a warm start a resumed run read back)."""

    stage: str
    groups: list[list[str]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "groups": self.groups, "seconds": round(self.seconds, 3)}


@dataclass
class Timings:
    """Wall times of a search's stages, in seconds (``metrics.json``: ``search.*_seconds``)."""

    warm_start: float = 0.0
    search: float = 0.0  # the supernet alone
    finetune: float = 0.0
    check: float = 0.0  # the merge check, final model included
    total: float = 0.0
    local_search: float = 0.0  # the check's search over groupings (part of ``check``)

    @property
    def decision(self) -> float:
        """Until the groups were decided: the warm start, the search and the check's local search."""
        return self.warm_start + self.search + self.local_search


@dataclass
class SearchResult:
    """What a search produced (also written to ``out_dir``).

    ``metrics`` is ``metrics.json``; :attr:`totals`, :attr:`timings` and :attr:`stages` are its
    main numbers, typed.
    """

    groups: list[list[str]]
    assignment: dict[str, int]
    probabilities: dict[str, list[float]]
    num_branches: int
    model: GroupedNetwork
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    ground_truth: list[list[str]] | None = None
    timings: Timings = field(default_factory=Timings)
    stages: list[StageRecord] = field(default_factory=list)

    def total(self, split: str, key: str = "total_loss") -> float:
        """A total of the final network on ``val`` or ``test`` (``total_loss``, ``weighted_loss``,
        ``total_error``)."""
        return float(self.metrics["totals"][split][key])

    @property
    def val_loss(self) -> float:
        """The final network's total validation loss."""
        return self.total("val")

    @property
    def test_loss(self) -> float:
        """The final network's total test loss."""
        return self.total("test")

    @property
    def adjusted_rand_index(self) -> float | None:
        """Against the data set's known partition, when it has one."""
        truth = self.metrics.get("ground_truth")
        return float(truth["adjusted_rand_index"]) if truth else None

    @property
    def local_search(self) -> dict[str, Any] | None:
        """``metrics.json``'s ``local_search`` section (None without a merge check)."""
        return self.metrics.get("local_search")
