"""The training loop's bookkeeping: what is logged when, and validation only where it is read."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

import dmtg_nas
from dmtg_nas.components import load_data
from dmtg_nas.engine.train import train_network
from dmtg_nas.nni.space import GroupingSpace

from .conftest import planted_doc


class _Recorder(pl.Callback):
    """Every training batch's loss and size, and how many validation batches ran."""

    def __init__(self) -> None:
        self.epochs: list[list[tuple[float, int]]] = []
        self.val_batches = 0
        self.logged: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.epochs:  # the previous epoch's logged mean (the module logs it at the epoch's end)
            self.logged.append(float(trainer.callback_metrics["train_loss"]))
        self.epochs.append([])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.epochs[-1].append((float(outputs["loss"]), int(batch[0].shape[0])))

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.val_batches += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.logged.append(float(trainer.callback_metrics["train_loss"]))


def _train(overrides: list[str], epochs: int = 3) -> _Recorder:
    # 400 samples, 60% training, batch 64: three full batches and one of 48 per epoch
    spec = dmtg_nas.load_spec(planted_doc(), overrides)
    data = load_data(spec)
    space = GroupingSpace(spec.tasks, 2, spec.backbone, spec.heads, data.input_shape, "independent")
    model = space.freeze({"t0": 0, "t1": 0, "t2": 1, "t3": 1})
    recorder = _Recorder()
    train_network(model, data, spec.tasks, spec.strategy, epochs, callbacks=[recorder])
    return recorder


def test_train_loss_is_the_sample_weighted_mean_of_each_epoch() -> None:
    recorder = _train([])
    assert len(recorder.epochs) == 3 and len(recorder.logged) == 3
    sizes = [size for _, size in recorder.epochs[0]]
    assert len(set(sizes)) == 2  # a short last batch: the weighting matters
    for batches, logged in zip(recorder.epochs, recorder.logged):
        mean = sum(loss * size for loss, size in batches) / sum(size for _, size in batches)
        unweighted = sum(loss for loss, _ in batches) / len(batches)
        assert abs(logged - mean) < 1e-5 * max(1.0, abs(mean))
        assert abs(mean - unweighted) > 1e-6  # the test can tell the two apart
    assert recorder.logged[-1] < recorder.logged[0]  # training lowers it


def test_train_network_validates_only_for_the_plateau_schedule() -> None:
    # nothing reads the validation loss of a plain training: no validation pass between epochs
    assert _train([], epochs=2).val_batches == 0
    # the plateau schedule steps on it: two validation batches (80 samples of 64) per epoch
    assert _train(["strategy.lr_schedule.name=plateau"], epochs=2).val_batches == 4
    # on the training loss (the reference code's plateau) it needs none
    assert _train(["strategy.lr_schedule={name: plateau, monitor: train_loss}"], epochs=2).val_batches == 0


def test_skipping_validation_does_not_change_the_trained_weights() -> None:
    spec = dmtg_nas.load_spec(planted_doc())
    data = load_data(spec)
    nets = []
    for validate in (False, True):
        torch.manual_seed(0)
        space = GroupingSpace(spec.tasks, 2, spec.backbone, spec.heads, data.input_shape, "independent")
        model = space.freeze({"t0": 0, "t1": 0, "t2": 1, "t3": 1})
        # with the plateau schedule (patience longer than training) validation runs, lr unchanged
        strategy = spec.strategy
        if validate:
            schedule = strategy.lr_schedule.model_copy(update={"name": "plateau", "patience": 10})
            strategy = strategy.model_copy(update={"lr_schedule": schedule})
        train_network(model, data, spec.tasks, strategy, 2)
        nets.append(model.state_dict())
    for name, value in nets[0].items():
        assert torch.equal(value, nets[1][name]), name


def test_search_log_keeps_losses_tau_and_per_task_curves(tmp_path: Path) -> None:
    overrides = ["strategy.epochs=3", "strategy.finetune.epochs=0", "strategy.local_search.enabled=false"]
    spec = dmtg_nas.load_spec(planted_doc(), overrides)
    dmtg_nas.search(spec, tmp_path / "run", progress=False)
    with (tmp_path / "run" / "logs" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"train_loss", "tau", "val_loss", "val/t0/mse", "val/t3/mae"} <= columns
    for column in ("train_loss", "tau", "val_loss", "val/t0/mse"):
        values = [float(r[column]) for r in rows if r.get(column)]
        assert len(values) == 3, column  # once per epoch
    assert all(float(r["tau"]) == 1.0 for r in rows if r.get("tau"))  # the preset's constant tau


def test_search_without_outputs_skips_validation_and_trains_the_same() -> None:
    overrides = ["strategy.epochs=3", "strategy.finetune.epochs=1", "strategy.local_search.enabled=false"]
    spec = dmtg_nas.load_spec(planted_doc(), overrides)
    data = load_data(spec)
    quiet = dmtg_nas.search(spec, None, progress=False, data=data)  # nothing would read a validation
    recorder = _Recorder()  # a caller's callback may read it: the search validates every epoch
    checked = dmtg_nas.search(spec, None, progress=False, data=data, callbacks=[recorder])
    assert recorder.val_batches == 3 * 2  # 80 validation samples in batches of 64, three epochs
    assert [h["epoch"] for h in quiet.history] == [h["epoch"] for h in checked.history] == [0, 1, 2, 3]
    assert all(h["val_loss"] is None for h in quiet.history)
    assert all(isinstance(h["val_loss"], float) for h in checked.history[1:])
    for a, b in zip(quiet.history, checked.history):  # the same search, epoch by epoch
        assert a["probabilities"] == b["probabilities"] and a["tau"] == b["tau"]
    assert quiet.groups == checked.groups
    for name, value in quiet.model.state_dict().items():
        assert torch.equal(value, checked.model.state_dict()[name]), name
    assert quiet.metrics["test"] == checked.metrics["test"]
