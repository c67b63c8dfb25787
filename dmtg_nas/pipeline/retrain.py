"""``dmtg retrain``: train the grouping of a finished search to completion."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ..components import load_data
from ..config import load_spec
from ..engine.train import evaluate_splits, train_network, train_partition
from ..errors import DmtgError
from ..hardware import barrier, eval_device, is_global_zero
from ..network import load_model
from .outputs import write_json

__all__ = ["retrain"]


def retrain(
    run_dir: str | Path,
    *,
    init: str = "scratch",
    epochs: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
    overrides: Sequence[str] = (),
    trust_code: bool = False,
) -> dict[str, Any]:
    """Train the grouped network of a finished search to completion and report test metrics.

    Args:
        run_dir: a search output folder (``config.yaml``, ``grouping.json``, ``model.pt``).
        init: ``scratch`` (fresh weights, one branch per group) or ``search`` (continue from the
            search's pruned network).
        epochs: training epochs (default: the search's ``epochs + finetune.epochs``).
        out_dir: where to write ``metrics.json`` and ``model.pt`` (default: ``run_dir/retrain``).
        overrides: ``dotted.key=value`` changes to the search's spec (e.g. ``strategy.trainer.devices=2``).
        trust_code: run the code the folder's ``config.yaml`` names (a ``package.module:function``
            data set); without it such a folder is refused before anything is imported (a run
            folder may come from someone else).

    Returns:
        the metrics (``val``, ``test``, ``totals``, ``retrain``).
    """
    run = Path(run_dir)
    for name in ("config.yaml", "grouping.json"):
        if not (run / name).is_file():
            raise DmtgError(f"{run}: not a finished search (no {name})")
    if init not in ("scratch", "search"):
        raise DmtgError(f"init must be 'scratch' or 'search', got {init!r}")
    spec = load_spec(run / "config.yaml", overrides, trust_code=trust_code)
    groups = json.loads((run / "grouping.json").read_text())["groups"]
    out = Path(out_dir) if out_dir is not None else run / "retrain"
    data = load_data(spec)
    budget = epochs or spec.strategy.epochs + spec.strategy.finetune.epochs
    t0 = time.perf_counter()
    if init == "scratch":
        model, metrics = train_partition(spec, data, groups, epochs=budget, progress=progress, stage="retrain")
    else:
        model = load_model(run / "model.pt")
        pl.seed_everything(spec.strategy.seed, workers=True, verbose=False)
        train_network(model, data, spec.tasks, spec.strategy, budget, progress=progress, stage="retrain")
        metrics = evaluate_splits(model, data, spec.tasks, eval_device(spec.strategy.trainer))
    metrics["retrain"] = {"init": init, "epochs": budget, "groups": groups, "seconds": time.perf_counter() - t0}
    if is_global_zero():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", metrics)
        model.save(out / "model.pt")
    barrier()
    return metrics
