"""Pictures of a search (how each task's branch probabilities formed over training) and of a
multi-objective tuning study (its Pareto front)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_pareto", "plot_probabilities"]


def plot_probabilities(
    history: Sequence[Mapping[str, Any]],
    task_names: Sequence[str],
    path: str | Path,
    *,
    assignment: Mapping[str, int] | None = None,
) -> Path:
    """One panel per task: the probability of each branch against the epoch; the chosen branch
    is named in the panel title. Writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    n = len(task_names)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharex=True, sharey=True)
    epochs = [h["epoch"] for h in history]
    k = len(history[0]["probabilities"][task_names[0]]) if history else 0
    colors = plt.get_cmap("tab10")
    for i, name in enumerate(task_names):
        ax = axes[i // cols][i % cols]
        for b in range(k):
            ax.plot(epochs, [h["probabilities"][name][b] for h in history], color=colors(b % 10), label=f"branch {b}")
        title = name if assignment is None else f"{name} -> branch {assignment[name]}"
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel("p(branch)")
    if k:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=min(k, 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94 if k else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pareto(
    points: Sequence[tuple[int, Sequence[float]]],
    front: Sequence[int],
    objectives: Sequence[str],
    path: str | Path,
) -> Path:
    """One panel per objective after the first: the first (validation loss) against it, one dot
    per complete trial ``(number, values)``, the trials of the ``front`` highlighted and labelled.
    With three or more objectives a front trial may look dominated in one panel: it is not in all of
    them together. Writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    on_front = set(front)
    panels = len(objectives) - 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.8), squeeze=False, sharey=True)
    for j, name in enumerate(objectives[1:], start=1):
        ax = axes[0][j - 1]
        rest = [(v[j], v[0]) for n, v in points if n not in on_front]
        best = sorted((v[j], v[0], n) for n, v in points if n in on_front)
        ax.scatter([x for x, _ in rest], [y for _, y in rest], color="tab:gray", alpha=0.6, label="trial")
        ax.scatter([x for x, _, _ in best], [y for _, y, _ in best], color="tab:red", s=50, label="Pareto front")
        if len(objectives) == 2 and len(best) > 1:  # the front as the staircase it is
            ax.step([x for x, _, _ in best], [y for _, y, _ in best], where="post", color="tab:red", alpha=0.5)
        for x, y, n in best:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
        if name in ("branches", "parameters"):  # counts
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel(objectives[0])
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Pareto front (trial numbers; all objectives minimised)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
