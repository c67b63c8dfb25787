"""Pictures of a search: how each task's branch probabilities formed over training."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_probabilities"]


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
